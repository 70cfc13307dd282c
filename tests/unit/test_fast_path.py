"""The listener's fast path in memory: which first requests it takes, that it reads without consuming, and that the
internals check refuses a mitmproxy it could not run on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from mitmproxy.addons import proxyserver
from mitmproxy.proxy import mode_servers, mode_specs
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.test import taddons

from codexbridge.mitm import fastpath
from codexbridge.mitm.compat import IncompatibleMitmproxy, check_internals

UPGRADE = (b"GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
REVERSE = mode_specs.ProxyMode.parse("reverse:https://gateway.example:8443")


@pytest.fixture(autouse=True)
def _options() -> Iterator[None]:
    with taddons.context(proxyserver.Proxyserver()):  # (its options: keep_host_header)
        fastpath.take_upgrades("/v1/responses", lambda flow: True)
        yield
        fastpath.take_upgrades("/", None)


def test_the_request_is_made_as_mitmproxys_reverse_proxy_makes_it() -> None:
    request = fastpath._bridged_request(UPGRADE, REVERSE)  # type: ignore[arg-type]
    assert request is not None
    assert request.url == "https://gateway.example:8443/v1/responses"
    assert request.headers["Host"] == "gateway.example:8443"  # keep_host_header is off
    assert list(request.headers.keys())[0] == "Host"  # in its place


@pytest.mark.parametrize("head", [
    UPGRADE.replace(b"/v1/responses", b"/v1/other"),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n"),
    UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.1 junk"),
])
def test_other_requests_are_left_to_mitmproxy(head: bytes) -> None:
    """(Whether an upgrade is one the bridge answers is the bridge's decision: would_bridge, tested end to end.)"""
    assert fastpath._bridged_request(head, REVERSE) is None  # type: ignore[arg-type]


def test_the_head_is_read_where_it_lies_and_left_there() -> None:
    async def go() -> tuple[bytes | None, bytes | None, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(UPGRADE[:20])
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, reader.feed_data, UPGRADE[20:] + b"\x81\x00")
        head = await fastpath._peek_head(reader)
        other = asyncio.StreamReader()
        other.feed_data(b"\x16\x03\x01\x02\x00")  # a TLS ClientHello: not ours, at once
        return head, await fastpath._peek_head(other), await reader.read(1000)

    head, tls, left = asyncio.run(go())
    assert head == UPGRADE
    assert tls is None
    assert left == UPGRADE + b"\x81\x00"  # nothing consumed


def test_the_internals_check_covers_what_the_fast_path_relies_on(monkeypatch: pytest.MonkeyPatch) -> None:
    check_internals()
    monkeypatch.setattr(mode_servers.ServerInstance, "handle_stream", lambda self, reader, writer=None: None)
    with pytest.raises(IncompatibleMitmproxy, match="no longer makes a ProxyConnectionHandler"):
        check_internals()
    monkeypatch.undo()
    monkeypatch.delattr(http_layers, "HttpResponseHeadersHook")
    with pytest.raises(IncompatibleMitmproxy, match="HttpResponseHeadersHook is missing"):
        check_internals()


def test_the_head_is_read_as_mitmproxy_reads_it() -> None:
    from mitmproxy.net.http import http1

    lines = fastpath._LINES.split(UPGRADE[:-4])
    ours, theirs = fastpath._read_head(lines), http1.read_request_head(lines)
    assert ours is not None
    ours.timestamp_start = theirs.timestamp_start
    assert ours.get_state() == theirs.get_state()
    assert fastpath._read_head([*lines[:2], b" continued", *lines[2:]]) is None  # mitmproxy reads the unusual ones


def test_the_101_is_what_response_make_makes() -> None:
    from mitmproxy import http

    from codexbridge import mitm

    fields = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Accept", b"abc=")]
    ours, theirs = mitm.switching_protocols(fields), http.Response.make(101, b"", fields)
    ours.timestamp_start, ours.timestamp_end = theirs.timestamp_start, theirs.timestamp_end
    assert ours.get_state() == theirs.get_state()


def test_the_internals_check_covers_what_the_fast_path_over_tls_relies_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy.addons import next_layer
    from mitmproxy.proxy.layers import tls as tls_layers

    monkeypatch.delattr(tls_layers, "TlsFailedClientHook")
    with pytest.raises(IncompatibleMitmproxy, match="TlsFailedClientHook is missing"):
        check_internals()
    monkeypatch.undo()
    monkeypatch.setattr(next_layer.NextLayer, "_setup_reverse_proxy", staticmethod(lambda context, data: None))
    with pytest.raises(IncompatibleMitmproxy, match="reverse-mode stack is not what the fast path over TLS reproduces"):
        check_internals()



async def _resumed_at_feed(wait: str) -> tuple[list[str], bytes]:
    """What a task waiting for a reader's bytes (by `wait`) had done when the feed_data call that woke it returned;
    the call made from a plain callback, as a socket's data_received makes it."""
    reader = asyncio.StreamReader()
    seen: list[str] = []

    async def handshake() -> bytes:
        if wait == "ours":
            await fastpath.wait_for_bytes(reader)
        else:
            await reader._wait_for_data("stock")  # type: ignore[attr-defined]
        seen.append("resumed")
        return await reader.read(100)

    task = asyncio.create_task(handshake())
    await asyncio.sleep(0)
    at_feed: list[str] = []

    def data_received() -> None:
        reader.feed_data(b"flight")
        at_feed.extend(seen)

    asyncio.get_running_loop().call_soon(data_received)
    return at_feed, await task


def test_a_waiting_handshake_resumes_inside_the_callback_that_fed_it() -> None:
    """A TLS client's next flight is handled in the loop turn it arrives in, not a turn later (asyncio's own wait)."""
    assert asyncio.run(_resumed_at_feed("ours")) == (["resumed"], b"flight")
    assert asyncio.run(_resumed_at_feed("stock")) == ([], b"flight")


def test_the_wait_ends_as_asyncios_own_does() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await fastpath.wait_for_bytes(reader)
        assert reader._waiter is None  # type: ignore[attr-defined]  # (a later wait may begin)
        reader.feed_data(b"half a ClientHello")
        asyncio.get_running_loop().call_later(0.01, reader.feed_data, b", the rest")
        await fastpath.wait_for_bytes(reader)  # for more than the buffer holds, as asyncio's own wait
        assert await reader.read(100) == b"half a ClientHello, the rest"
        asyncio.get_running_loop().call_soon(reader.feed_eof)
        await fastpath.wait_for_bytes(reader)
        assert reader.at_eof()

        failing = asyncio.StreamReader()
        asyncio.get_running_loop().call_soon(failing.set_exception, ConnectionResetError("reset"))
        with pytest.raises(ConnectionResetError):
            await fastpath.wait_for_bytes(failing)

        fed_in_a_task = asyncio.StreamReader()
        waiting = asyncio.create_task(fastpath.wait_for_bytes(fed_in_a_task))
        await asyncio.sleep(0)
        fed_in_a_task.feed_data(b"x")  # from inside this task: the waiter resumes later, as with a future
        assert not waiting.done()
        await waiting
        with pytest.raises(RuntimeError, match="already waiting"):
            both = asyncio.StreamReader()
            first = asyncio.create_task(fastpath.wait_for_bytes(both))
            await asyncio.sleep(0)
            try:
                await fastpath.wait_for_bytes(both)
            finally:
                first.cancel()

    asyncio.run(go())


def test_the_internals_check_covers_the_readers_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.StreamReader, "_wakeup_waiter", lambda self: None)
    with pytest.raises(IncompatibleMitmproxy, match="_wakeup_waiter no longer completes its waiter"):
        check_internals()
