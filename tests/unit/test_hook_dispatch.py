"""mitm.dispatch: hooks reach exactly the addons mitmproxy's own dispatch reaches, in the same order, with the same
error handling, and addons added or removed later are seen."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy import log as mitmproxy_log
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import taddons, tflow

from codexbridge.mitm import dispatch


class Recorder:
    def __init__(self, name: str, calls: list[str], nested: list[Any] | None = None) -> None:
        self.name = name
        self.calls = calls
        if nested is not None:
            self.addons = nested

    def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request")


class AsyncRecorder(Recorder):
    async def request(self, flow: Any) -> None:
        await asyncio.sleep(0)
        self.calls.append(f"{self.name}.request(async)")


class Failing(Recorder):
    def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request")
        raise ValueError("boom")


class Halting(Recorder):
    def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request")
        raise exceptions.AddonHalt()


class NoHooks:
    name = "nohooks"


@pytest.fixture(params=["stock", "cached"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "cached":
        dispatch.install()
    yield request.param
    dispatch.uninstall()


def run(manager: AddonManager) -> None:
    asyncio.run(manager.trigger_event(hooks.UpdateHook([])))  # warms the cache on another hook
    asyncio.run(manager.trigger_event(_request_hook()))


def _request_hook() -> hooks.Hook:
    return HttpRequestHook(tflow.tflow())


def test_order_nesting_errors_and_halts_match_mitmproxy(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        manager.add(Recorder("a", calls), NoHooks(),
                    Recorder("b", calls, nested=[Failing("b1", calls), Recorder("b2", calls)]),
                    AsyncRecorder("c", calls), Halting("d", calls), Recorder("e", calls))
        with caplog.at_level(logging.ERROR):
            run(manager)
    # b1 fails: the rest of b's group is skipped (as mitmproxy's safecall around b does), c goes on; d halts
    assert calls == ["a.request", "b.request", "b1.request", "c.request(async)", "d.request"]
    assert "Addon error: boom" in caplog.text


def test_an_addon_added_or_removed_later_is_seen(mode: str) -> None:
    calls: list[str] = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        first = Recorder("first", calls)
        manager.add(first)
        run(manager)
        manager.add(Recorder("later", calls))
        run(manager)
        manager.remove(first)
        run(manager)
    assert calls == ["first.request", "first.request", "later.request", "later.request"]


def test_hook_args_are_the_dataclass_fields(mode: str) -> None:
    flow = tflow.tflow()
    assert HttpRequestHook(flow).args() == [flow]


def test_add_log_handler_passes_records_on_only_while_an_addon_implements_add_log() -> None:
    class Listener:
        def add_log(self, entry: Any) -> None:
            pass

    record = logging.LogRecord("x", logging.DEBUG, __file__, 1, "a debug line", None, None)
    with taddons.context() as tctx:
        dispatch.install()  # (after the master: its add_log handler exists now)
        try:
            handler = next(h for h in logging.getLogger().handlers if isinstance(h, mitmproxy_log.LegacyLogEvents))
            assert not dispatch.heard(handler) and not handler.filter(record)
            listener = Listener()
            tctx.master.addons.add(listener)
            assert dispatch.heard(handler) and handler.filter(record)
            tctx.master.addons.remove(listener)
            assert not handler.filter(record)
        finally:
            dispatch.uninstall()
        assert handler.filter(record)  # mitmproxy's own behaviour again
