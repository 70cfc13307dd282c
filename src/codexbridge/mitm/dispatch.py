"""Hook dispatch without mitmproxy's per-addon overhead: each hook goes straight to the addons that implement it.

mitmproxy passes every hook over every loaded addon (~40 in mitmdump), and for each one opens a context manager,
creates a coroutine and walks two generators before finding that the addon has no such method; a flow hook makes
a second pass for `update`. A WebSocket upgrade through the bridge triggers about ten hooks: that was most of a
new connection's CPU (a connection storm measured 6 ms of proxy CPU per connection, two thirds of it here).
Here the handlers of each hook are looked up once, in chain order (an addon, then the addons nested in it), and
looked up again whenever an addon is added or removed. An error of a top-level addon's handlers still goes through
mitmproxy's own `safecall` (it is logged and the next addon runs; AddonHalt stops the pass), awaitables are
awaited, and the hook's arguments are read once per pass. The synchronous pass (configure, and one per log record for the
deprecated add_log hook) works the same way. An addon that grows a hook method after it was loaded
is not seen until the next addon is added or removed. mitmproxy's handler for add_log formats every log record
(debug ones too) and wakes the loop to pass it on: while no addon implements add_log, it is skipped.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import types
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy import log as mitmproxy_log

_stock: dict[str, Any] = {}
_generation = itertools.count(1)
_current = 0  # bumped whenever any addon manager's chain may have changed
_ARG_NAMES: dict[type, tuple[str, ...]] = {}


def _changed() -> None:
    global _current
    _current = next(_generation)


def _handlers(manager: addonmanager.AddonManager, name: str) -> list[list[Any]]:
    """For each top-level addon that has one or more handlers of the hook: those handlers, in traversal order."""
    cache: dict[str, list[list[Any]]] | None = manager.__dict__.get("_codexbridge_hooks")
    if cache is None or manager.__dict__.get("_codexbridge_generation") != _current:
        cache = manager.__dict__["_codexbridge_hooks"] = {}
        manager.__dict__["_codexbridge_generation"] = _current
    groups = cache.get(name)
    if groups is None:
        groups = []
        for top in manager.chain:
            group = []
            for addon in addonmanager.traverse([top]):
                func = getattr(addon, name, None)
                if not func or isinstance(func, types.ModuleType):
                    continue  # (a module imported under a hook's name is no handler: as mitmproxy does)
                group.append(func if callable(func) else _not_callable(name, addon))
            if group:
                groups.append(group)
        cache[name] = groups
    return groups


def handlers(manager: addonmanager.AddonManager, name: str) -> list[list[Any]]:
    """The handlers of a hook, grouped by top-level addon, in the order a pass calls them."""
    return _handlers(manager, name)


def _not_callable(name: str, addon: Any) -> Any:
    def fail(*_: Any) -> None:  # raised where mitmproxy raises it: inside safecall, which logs it
        raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")

    return fail


async def trigger_event(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
    args = event.args()
    for group in _handlers(self, event.name):
        try:
            for func in group:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
        except exceptions.AddonHalt:
            return
        except Exception as e:  # noqa: BLE001 - handed to mitmproxy's safecall, which logs it or raises it on
            _safecall(e)


def trigger(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
    """The synchronous pass (mitmproxy's log handler makes one per log record, for the deprecated add_log hook)."""
    args = event.args()
    for group in _handlers(self, event.name):
        try:
            for func in group:
                if inspect.iscoroutinefunction(func):
                    raise exceptions.AddonManagerError(
                        f"Async handler {event.name} ({func}) cannot be called from sync context")
                func(*args)
        except exceptions.AddonHalt:
            return
        except Exception as e:  # noqa: BLE001 - handed to mitmproxy's safecall, which logs it or raises it on
            _safecall(e)


def _safecall(error: Exception) -> None:
    """What mitmproxy's safecall does with an addon's error (an OptionsError goes on, anything else is logged as
    an addon error): entered only when there is one, as the context manager costs more than most handlers."""
    with addonmanager.safecall():
        raise error


class _OnlyWhenHeard(logging.Filter):
    """On mitmproxy's handler for the deprecated add_log hook: a record goes on only while an addon implements it."""

    def __init__(self, manager: addonmanager.AddonManager) -> None:
        super().__init__()
        self.manager = manager

    def heard(self) -> bool:
        return bool(_handlers(self.manager, "add_log"))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.heard()


def heard(handler: logging.Handler) -> bool:
    """Whether a log handler passes records on (False for add_log's while no addon implements that hook)."""
    return not any(isinstance(f, _OnlyWhenHeard) and not f.heard() for f in handler.filters)


def _legacy_log_handlers() -> list[logging.Handler]:
    legacy = getattr(mitmproxy_log, "LegacyLogEvents", None)
    return [h for h in logging.getLogger().handlers if legacy is not None and isinstance(h, legacy)]


def hook_args(self: hooks.Hook) -> list[Any]:
    names = _ARG_NAMES.get(type(self))
    if names is None:
        names = _ARG_NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]  # dataclasses.fields accepts the dataclass instance mitmproxy's hooks are
    return [getattr(self, n) for n in names]


def _bumping(name: str) -> Any:
    stock = _stock[name]

    def changing_the_chain(self: addonmanager.AddonManager, *args: Any, **kwargs: Any) -> Any:
        _changed()
        try:
            return stock(self, *args, **kwargs)
        finally:
            _changed()

    changing_the_chain.__name__ = name
    changing_the_chain.__doc__ = stock.__doc__
    return changing_the_chain


def install() -> None:
    """Idempotent."""
    if _stock:
        return
    for name in ("trigger_event", "trigger", "register", "remove", "clear", "add"):
        _stock[name] = getattr(addonmanager.AddonManager, name)
    _stock["args"] = hooks.Hook.args
    for name in ("register", "remove", "clear", "add"):
        setattr(addonmanager.AddonManager, name, _bumping(name))
    addonmanager.AddonManager.trigger_event = trigger_event  # type: ignore[method-assign]  # installing codexbridge's replacement on mitmproxy's class is the point (checked at load)
    addonmanager.AddonManager.trigger = trigger  # type: ignore[method-assign]  # installing codexbridge's replacement on mitmproxy's class is the point (checked at load)
    hooks.Hook.args = hook_args  # type: ignore[method-assign]  # installing codexbridge's replacement on mitmproxy's class is the point (checked at load)
    _changed()
    for handler in _legacy_log_handlers():
        manager = getattr(getattr(handler, "master", None), "addons", None)
        if isinstance(manager, addonmanager.AddonManager):
            handler.addFilter(_OnlyWhenHeard(manager))


def uninstall() -> None:
    if not _stock:
        return
    for name in ("trigger_event", "trigger", "register", "remove", "clear", "add"):
        setattr(addonmanager.AddonManager, name, _stock[name])
    hooks.Hook.args = _stock["args"]  # type: ignore[method-assign]  # installing codexbridge's replacement on mitmproxy's class is the point (checked at load)
    for handler in _legacy_log_handlers():
        for f in [f for f in handler.filters if isinstance(f, _OnlyWhenHeard)]:
            handler.removeFilter(f)
    _stock.clear()
    _changed()
