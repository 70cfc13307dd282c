"""What Codex reads from a POST answer's headers over HTTP, in the form it reads it over WebSocket (sans-IO).

Over HTTP, Codex reads `openai-model` (a reroute), `x-codex-turn-state` (sticky routing, sent back on the turn's
next request), `x-reasoning-included`, `x-models-etag` and the quota headers from each answer. Over WebSocket it
reads the first two from a `response.metadata` event's `headers`, the quota from `codex.rate_limits` events
(`responses.quota`), and the other two only from the 101 answer to its upgrade: `UpgradeMemory` keeps what an
upstream's answers said so that the next upgrade to it can say it too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from codexbridge.responses.quota import first_values, rate_limit_events

METADATA_EVENT = "response.metadata"
# Answer headers Codex takes from a response.metadata event's `headers` (as it takes them from an HTTP answer).
METADATA_HEADERS = ("openai-model", "x-openai-model", "x-codex-turn-state", "x-codex-safety-buffering-faster-model")
# Answer headers Codex reads over WebSocket only from the 101.
UPGRADE_ONLY_HEADERS = ("x-reasoning-included", "x-models-etag")


def metadata_event(headers: Iterable[tuple[str, str]]) -> dict[str, Any] | None:
    """The response.metadata event a native server sends for these answer headers, or None when they hold none."""
    values = first_values(headers)
    found = {name: values[name] for name in METADATA_HEADERS if name in values}
    return {"type": METADATA_EVENT, "headers": found} if found else None


def answer_events(headers: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """What a POST answer's headers tell Codex, as the events that tell it over WebSocket, in HTTP mode's order
    (the server model first, then the quota), to be sent before the answer's own events."""
    pairs = list(headers)
    meta = metadata_event(pairs)
    return ([meta] if meta is not None else []) + rate_limit_events(pairs)


def is_codex_client(handshake: Iterable[tuple[str, str]]) -> bool:
    """Codex's upgrade carries its own headers (`originator: codex_*`, `x-codex-*`); only Codex gets the
    Codex-specific events (`codex.rate_limits`, `response.metadata`), which no other client knows."""
    for name, value in handshake:
        key = name.lower()
        if key.startswith("x-codex-") or (key == "originator" and value.lower().startswith("codex")):
            return True
    return False


class UpgradeMemory:
    """The upgrade-only headers each upstream's last answer carried (by upstream origin), for the next 101.

    Over HTTP Codex sees them on every answer; over WebSocket only on the upgrade, which the bridge answers before
    any POST. So a connection gets what the same upstream answered before it (the first one to an upstream since
    the proxy started gets nothing), and keeps it for its whole life.
    """

    def __init__(self, pinned: Mapping[str, str] | None = None, max_upstreams: int = 1024) -> None:
        self.pinned = {k.lower(): v for k, v in (pinned or {}).items()}  # set by an option; "" leaves one out
        self.max_upstreams = max_upstreams
        self._seen: OrderedDict[str, dict[str, str]] = OrderedDict()

    def observe(self, upstream: str, headers: Iterable[tuple[str, str]]) -> None:
        """A successful POST answer from `upstream`: remember what it said, and what it no longer says."""
        values = first_values(headers)
        self._seen[upstream] = {name: values[name] for name in UPGRADE_ONLY_HEADERS
                                if name in values and values[name].isascii() and values[name].isprintable()}
        self._seen.move_to_end(upstream)
        while len(self._seen) > self.max_upstreams:
            self._seen.popitem(last=False)

    def upgrade_headers(self, upstream: str) -> list[tuple[str, str]]:
        merged = {**self._seen.get(upstream, {}), **self.pinned}
        return [(name, value) for name, value in merged.items() if value]
