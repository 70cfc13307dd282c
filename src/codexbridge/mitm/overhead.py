"""Per-connection costs of mitmproxy that change nothing it does: option reads, ids, Host header parsing.

Every read of an option (`ctx.options.name`, dozens per connection across the loaded addons) deep-copies its value
twice, which for a str, int, bool or None gives back the same object: those are returned as they are. Each connection
(client and server) and each flow draws its uuid4 id through uuid.UUID and a system call of its own: here the same
random version-4 ids, in the same text form, come from os.urandom drawn for many ids at once. mitmproxy's onboarding
app parses each request's Host header (Request.pretty_host) to see whether the request is for it: url.parse_authority
is a pure function of its arguments, and a proxy's clients send few distinct Host headers, so its answers are kept.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import uuid
from typing import Any

from mitmproxy import connection, flow, optmanager
from mitmproxy.net.http import url

_stock: dict[str, Any] = {}
_AUTHORITIES = 1024  # Host headers whose parse is kept
_AS_IS = frozenset({str, int, bool, float, bytes, type(None)})  # immutable: deepcopy returns the value itself
_BATCH = 256  # ids drawn at once


def _current(self: optmanager._Option) -> Any:
    value = self._default if self.value is optmanager.unset else self.value
    return value if type(value) in _AS_IS else copy.deepcopy(value)


class _Ids:
    """What mitmproxy's connection and flow modules use of the uuid module: str(uuid.uuid4())."""

    def __init__(self) -> None:
        self._ready: list[str] = []

    def uuid4(self) -> str:
        try:
            return self._ready.pop()  # (atomic: a thread of an addon may make a flow too)
        except IndexError:
            pool = os.urandom(16 * _BATCH).hex()
            ready = [_uuid4_text(pool[at:at + 32]) for at in range(0, len(pool), 32)]
            text = ready.pop()
            self._ready = ready  # (a batch another thread drew at the same time is dropped: no id is given twice)
            return text

    def forget(self) -> None:
        """(In a forked child: its ids must not repeat the parent's.)"""
        self._ready = []


def _uuid4_text(h: str) -> str:
    """str(uuid.UUID(bytes=bytes.fromhex(h), version=4)) for 32 hex digits: the version nibble set to 4, the top
    two bits of the variant nibble to 10."""
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.forget)


def _replaceable() -> dict[str, bool]:
    """Which of mitmproxy's parts are still what is replaced here (each replacement is only a saving: one that
    no longer fits is left out)."""
    try:
        current = inspect.getsource(optmanager._Option.current)
        ids = all("str(uuid.uuid4())" in inspect.getsource(module) for module in (connection, flow))
    except (AttributeError, OSError, TypeError):
        current, ids = "", False
    return {
        "current": ("copy.deepcopy(" in current and hasattr(optmanager, "unset")
                    and hasattr(optmanager._Option, "_default")),
        "uuid": ids and all(getattr(module, "uuid", None) is uuid for module in (connection, flow)),
        "parse_authority": callable(getattr(url, "parse_authority", None)),
    }


def install() -> None:
    """Idempotent."""
    if _stock:
        return
    fits = _replaceable()
    _stock["installed"] = True
    if fits["current"]:
        _stock["current"] = optmanager._Option.current
        optmanager._Option.current = _current  # type: ignore[method-assign]  # installing codexbridge's replacement on mitmproxy's class is the point (checked above)
    if fits["uuid"]:
        connection.uuid = flow.uuid = _ids  # type: ignore[assignment]  # (checked above)
        _stock["uuid"] = uuid
    if fits["parse_authority"]:
        _stock["parse_authority"] = url.parse_authority
        url.parse_authority = functools.lru_cache(maxsize=_AUTHORITIES)(url.parse_authority)  # (an error is not kept: raised anew)


def uninstall() -> None:
    if "current" in _stock:
        optmanager._Option.current = _stock["current"]  # type: ignore[method-assign]
    if "uuid" in _stock:
        connection.uuid = flow.uuid = _stock["uuid"]
    if "parse_authority" in _stock:
        url.parse_authority = _stock["parse_authority"]
    _stock.clear()
