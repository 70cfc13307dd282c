"""What makes a bridged upgrade cheaper before its 101 changes nothing: the one-pass handshake headers, the option
reads and ids of mitm.overhead, the session's handshake state made when first used, errors in hook dispatch; and
the collection after sessions waits for a lull in upgrades."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from mitmproxy import connection, exceptions, flow, http, optmanager
from mitmproxy.net.http import url
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import taddons, tflow

from codexbridge.addons.bridge import GC_LULL, GC_MAX_DELAY, CodexBridge
from codexbridge.addons.common import handshake_fields, header, is_websocket_upgrade, upgrade_fields
from codexbridge.bridge.session import BridgeSession, SessionConfig
from codexbridge.bridge.upstream import UpstreamPool, UpstreamSettings
from codexbridge.mitm import dispatch, overhead

HANDSHAKE_NAMES = ("upgrade", "connection", "sec-websocket-version", "sec-websocket-key")


@pytest.mark.parametrize("fields", [
    [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Version", b"13"),
     (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")],
    [(b"UPGRADE", b"WebSocket"), (b"connection", b"keep-alive"), (b"Connection", b"upgrade"),
     (b"sec-websocket-version", b"13"), (b"Sec-WebSocket-Version", b"8")],  # repeated names are joined
    [(b"Upgrade", b"websoc\xe2\x84\xaaet"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Key", b"\xff\xfe")],
    [(b"Host", b"x")],
])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_handshake_fields_are_what_headers_get_gives(fields: list[tuple[bytes, bytes]], method: str) -> None:
    request = http.Request.make(method, "http://x/v1/responses", headers=http.Headers(fields))
    expected = tuple(request.headers.get(name, "") for name in HANDSHAKE_NAMES)
    assert handshake_fields(request) == expected
    stock_upgrade = (request.method == "GET" and expected[0].lower() == "websocket"
                     and "upgrade" in expected[1].lower())
    assert is_websocket_upgrade(request) is stock_upgrade
    assert upgrade_fields(request) == (expected[2:] if stock_upgrade else None)
    for name in ("content-type", "upgrade", "connection", "host"):
        assert header(request.headers, name.encode()) == request.headers.get(name, "")


@pytest.fixture
def installed() -> Iterator[None]:
    overhead.install()
    try:
        yield
    finally:
        overhead.uninstall()


def test_option_reads_give_the_same_values_and_copies_of_mutable_ones(installed: None) -> None:
    options = optmanager.OptManager()
    options.add_option("word", str, "a", "A word.")
    options.add_option("number", int, 3, "A number.")
    options.add_option("words", Sequence[str], ["a"], "Words.")
    assert (options.word, options.number, options.words) == ("a", 3, ["a"])
    options.words.append("b")  # a copy: the option is unchanged
    options.update(word="b", number=4)
    assert (options.word, options.number, options.words) == ("b", 4, ["a"])


def test_an_id_is_what_uuid_makes_of_the_same_random_bytes() -> None:
    for random in (bytes(16), b"\xff" * 16, bytes(range(16)), *(os.urandom(16) for _ in range(200))):
        assert overhead._uuid4_text(random.hex()) == str(uuid.UUID(bytes=random, version=4))


def test_connection_and_flow_ids_are_distinct_uuid4s(installed: None) -> None:
    ids = [tflow.tflow().id for _ in range(300)] + [connection.Client(peername=("1.2.3.4", 5), sockname=("1.2.3.4", 6),
                                                                      timestamp_start=0.0).id for _ in range(300)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("authority", ["example.com:8443", "[::1]:80", "Ex\u00e4mple.com", "bad host:1", "a:99999"])
def test_host_headers_parse_as_before(installed: None, authority: str) -> None:
    request = http.Request.make("GET", "http://x/")
    request.headers["host"] = authority
    for _ in range(2):  # (the second time from what was kept)
        assert request.pretty_host == overhead._stock["parse_authority"](authority, check=False)[0]
        try:
            expected: Any = overhead._stock["parse_authority"](authority, check=True)
        except ValueError:
            with pytest.raises(ValueError):
                url.parse_authority(authority, check=True)
        else:
            assert url.parse_authority(authority, check=True) == expected


def test_uninstall_restores_mitmproxys_own() -> None:
    overhead.uninstall()  # (whatever an earlier test left installed)
    stock = optmanager._Option.current
    assert all(overhead._replaceable().values())  # the installed mitmproxy gets every saving
    overhead.install()
    assert optmanager._Option.current is not stock and connection.uuid is not uuid
    overhead.uninstall()
    assert optmanager._Option.current is stock and connection.uuid is uuid and flow.uuid is uuid
    assert url.parse_authority is not None and not hasattr(url.parse_authority, "cache_info")


class Channel:
    def send(self, frames: list[bytes], synthetic: bool = False) -> bool:
        return True

    def congested(self) -> bool:
        return False

    async def drained(self) -> bool:
        return True

    def response_state(self, in_flight: bool) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass


def test_the_session_uses_the_handshake_headers_as_they_were_when_it_was_made() -> None:
    async def main() -> None:
        headers = http.Headers([(b"Authorization", b"Bearer sk-x"), (b"originator", b"codex_cli_rs"),
                                (b"Upgrade", b"websocket")])
        session = BridgeSession(SessionConfig("http://x/v1/responses", UpstreamSettings()),
                                headers.items(multi=True), Channel(), UpstreamPool())
        headers["Authorization"] = "Bearer sk-later"  # an addon changes the request after the bridge answered
        del headers["originator"]
        assert ("Authorization", "Bearer sk-x") in session.request_headers
        assert session.codex_client and session.downstream.close is not None

    asyncio.run(main())


class Raising:
    def __init__(self, error: Exception, calls: list[str]) -> None:
        self.error, self.calls = error, calls

    def request(self, flow: Any) -> None:
        self.calls.append("raising")
        raise self.error


class After:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def request(self, flow: Any) -> None:
        self.calls.append("after")


@pytest.mark.parametrize("cached", [False, True])
def test_an_options_error_in_a_hook_goes_on_as_with_mitmproxys_dispatch(cached: bool) -> None:
    if cached:
        dispatch.install()
    try:
        calls: list[str] = []
        with taddons.context() as tctx:
            tctx.master.addons.add(Raising(exceptions.OptionsError("bad"), calls), After(calls))
            with pytest.raises(exceptions.OptionsError, match="bad"):
                asyncio.run(tctx.master.addons.trigger_event(HttpRequestHook(tflow.tflow())))
        assert calls == ["raising"]
    finally:
        dispatch.uninstall()


def test_the_collection_after_sessions_waits_for_a_lull_in_upgrades_but_not_forever() -> None:
    async def main() -> None:
        bridge = CodexBridge()
        bridge._gc_tuned = True
        bridge.websocket_end(tflow.twebsocketflow())
        assert bridge._gc_timer is not None
        bridge._gc_timer.cancel()
        bridge._last_upgrade = time.monotonic()  # a storm is on: the collection waits
        bridge._collect()
        assert bridge._gc_timer is not None and bridge._gc_cost == 0.0
        bridge._gc_timer.cancel()
        bridge._last_upgrade = time.monotonic() - GC_LULL  # a lull: it runs
        bridge._collect()
        assert bridge._gc_timer is None and bridge._gc_cost > 0.0
        bridge._gc_cost, bridge._last_upgrade = 0.0, time.monotonic()  # upgrades never stop: it runs once overdue
        bridge._gc_due = asyncio.get_running_loop().time() - GC_MAX_DELAY
        bridge._collect()
        assert bridge._gc_timer is None and bridge._gc_cost > 0.0

    asyncio.run(main())
