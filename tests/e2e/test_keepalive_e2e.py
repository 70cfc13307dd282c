"""Downstream keepalive through a real mitmdump, observed by a real WebSocket client that sees pings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import wait_for
from support.mitmdump import Mitmdump, start_mitmdump
from support.rawws import RawWebSocket
from support.upstream import Upstream


def create(text: str) -> dict[str, Any]:
    return {"type": "response.create", "model": "m",
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]}


async def until_terminal(ws: RawWebSocket) -> list[dict[str, Any]]:
    events = []
    while True:
        events.append(await ws.recv_json())
        if events[-1]["type"] in ("response.completed", "error", "response.failed"):
            return events


@pytest.fixture(scope="module")
def pinging(module_tmp: Path, upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, upstream.url, "codexbridge_ping_interval=2", "codexbridge_ping_timeout=1")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def pinging_drain(module_tmp: Path, upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, upstream.url, "codexbridge_ping_interval=2", "codexbridge_ping_timeout=1",
                           "codexbridge_on_disconnect=drain")
    yield proxy
    proxy.stop()


def test_no_ping_before_first_business_frame(pinging: Mitmdump) -> None:
    async def go() -> None:
        ws = await RawWebSocket.connect(pinging.port)
        await asyncio.sleep(4.5)
        assert ws.pings == []
        assert ws.close_code is None
        await ws.close()

    asyncio.run(go())


def test_idle_pings_answered_keep_the_connection(pinging: Mitmdump) -> None:
    async def go() -> None:
        ws = await RawWebSocket.connect(pinging.port)
        await ws.send_json(create("hi"))
        await until_terminal(ws)
        t0 = time.monotonic()
        await asyncio.sleep(7.0)
        assert 2 <= len(ws.pings) <= 4, ws.pings
        assert abs((ws.pings[0] - t0) - 2.0) < 0.6
        assert ws.close_code is None, "a client that answers pings must stay connected"
        await ws.send_json(create("still here"))
        assert (await until_terminal(ws))[-1]["type"] == "response.completed"
        await ws.close()

    asyncio.run(go())
    assert "stage=downstream_ping_ok" in pinging.log


def test_idle_pings_over_tls_keep_the_session_working(pinging: Mitmdump) -> None:
    """Over TLS, a ping finds the connection idle and gives it fresh memory BIOs: the session goes on unchanged."""
    async def go() -> None:
        ws = await RawWebSocket.connect(pinging.port, tls=True)
        await ws.send_json(create("[[deltas:400]] a burst"))
        assert (await until_terminal(ws))[-1]["type"] == "response.completed"
        await asyncio.sleep(4.6)
        assert len(ws.pings) >= 2 and ws.close_code is None
        await ws.send_json(create("[[deltas:400]] again"))
        events = await until_terminal(ws)
        assert events[-1]["type"] == "response.completed"
        assert sum(e["type"] == "response.output_text.delta" for e in events) == 400
        await ws.close()

    asyncio.run(go())


def test_client_ping_is_answered_by_the_bridge(pinging: Mitmdump) -> None:
    async def go() -> None:
        ws = await RawWebSocket.connect(pinging.port)
        pong = asyncio.get_running_loop().create_future()
        original = ws.ws.receive_data

        def spy(data: bytes | None) -> None:
            original(data)
            if data and b"\x8a" in data[:1] and not pong.done():
                pong.set_result(data)

        ws.ws.receive_data = spy  # type: ignore[method-assign]
        await ws.ping(b"client-ping")
        async with asyncio.timeout(3):
            data = await pong
        assert b"client-ping" in data
        await ws.close()

    asyncio.run(go())


@pytest.mark.parametrize("mode", ["cancel", "drain"])
def test_unanswered_ping_closes_client_1011_and_handles_upstream(
    request: pytest.FixtureRequest, upstream: Upstream, mode: str
) -> None:
    proxy: Mitmdump = request.getfixturevalue("pinging" if mode == "cancel" else "pinging_drain")

    async def go() -> None:
        ws = await RawWebSocket.connect(proxy.port, answer_pings=False)
        await ws.send_json(create("[[sleep:6]] slow"))  # still silent when the client is closed (5 s at most)
        assert (await ws.recv_json())["type"] == "response.created"
        t0 = time.monotonic()
        async with asyncio.timeout(8):
            await ws.closed.wait()
        elapsed = time.monotonic() - t0
        assert ws.close_code == 1011 and "pong" in (ws.close_reason or "")
        assert 2.5 <= elapsed <= 5.0, elapsed
        if mode == "cancel":
            assert await wait_for(lambda: upstream.stats()["active_streams"] == 0, 2)
        else:
            assert upstream.stats()["active_streams"] == 1, "drain mode must keep reading the upstream"
            assert await wait_for(lambda: upstream.stats()["active_streams"] == 0, 10)
        ws.abort()

    asyncio.run(go())
    assert "stage=downstream_ping_timeout" in proxy.log


@pytest.fixture(scope="module")
def passthrough(module_tmp: Path, ws_upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, ws_upstream.url, "codexbridge_mode=passthrough",
                           "codexbridge_ping_interval=2", "codexbridge_ping_timeout=1")
    yield proxy
    proxy.stop()


def test_passthrough_pings_client_and_never_forwards_our_pongs(passthrough: Mitmdump, ws_upstream: Upstream) -> None:
    ws_upstream.reset()

    async def go() -> None:
        ws = await RawWebSocket.connect(passthrough.port)
        await ws.send_json(create("hi"))
        assert (await until_terminal(ws))[-1]["type"] == "response.completed"
        await asyncio.sleep(4.6)
        assert len(ws.pings) >= 2, "idle passthrough clients are pinged too"
        await ws.ping(b"from-the-client")
        await asyncio.sleep(0.5)
        assert ws.close_code is None
        await ws.close()

    asyncio.run(go())
    stats = ws_upstream.stats()
    assert stats["ws_pongs_received"] == 0, "a pong answering our ping reached the upstream"
    assert stats["ws_pings_received"] == 1, "a client's own ping is relayed"
    assert "stage=downstream_ping_ok" in passthrough.log


def test_passthrough_client_without_pongs_is_closed_1011(passthrough: Mitmdump, ws_upstream: Upstream) -> None:
    ws_upstream.reset()

    async def go() -> None:
        ws = await RawWebSocket.connect(passthrough.port, answer_pings=False)
        await ws.send_json(create("[[sleep:8]] slow"))
        assert (await ws.recv_json())["type"] == "response.created"
        async with asyncio.timeout(8):
            await ws.closed.wait()
        assert ws.close_code == 1011 and "pong" in (ws.close_reason or "")
        assert await wait_for(lambda: ws_upstream.stats()["ws_open"] == 0, 3), "the upstream socket must be closed"
        ws.abort()

    asyncio.run(go())
    assert "stage=downstream_ping_timeout" in passthrough.log
