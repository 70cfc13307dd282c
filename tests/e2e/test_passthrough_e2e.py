"""Passthrough through a real mitmdump to a real WebSocket upstream (the `websockets` library): every frame
arrives unchanged and in order, whether mitmproxy's relay carries it (permessage-deflate negotiated) or the
direct relay (plain connections, no extension); the upstream's Close, Pings and large frames cross too,
and the flow file holds every message both ways."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets
from mitmproxy import http as mhttp
from mitmproxy import io as mio

from codexbridge.tools.procs import free_port
from support.mitmdump import start_mitmdump

BIG = "x" * 150_000


async def upstream_handler(ws: websockets.ServerConnection) -> None:
    async for raw in ws:
        create = json.loads(raw)
        text = create["input"]
        rid = f"resp_{len(text)}"
        await ws.send(json.dumps({"type": "response.created", "response": {"id": rid}}))
        for i in range(50):
            await ws.send(json.dumps({"type": "response.output_text.delta", "delta": f"d{i} "}))
        await ws.ping(b"from-upstream")
        await ws.send(json.dumps({"type": "response.output_text.delta", "delta": BIG}))
        if text == "close":
            await ws.close(4001, "upstream says bye")
            return
        await ws.send(json.dumps({"type": "response.completed", "response": {"id": rid}}))


def expected(text: str) -> list[str]:
    rid = f"resp_{len(text)}"
    out = [json.dumps({"type": "response.created", "response": {"id": rid}})]
    out += [json.dumps({"type": "response.output_text.delta", "delta": f"d{i} "}) for i in range(50)]
    out.append(json.dumps({"type": "response.output_text.delta", "delta": BIG}))
    if text != "close":
        out.append(json.dumps({"type": "response.completed", "response": {"id": rid}}))
    return out


@pytest.mark.parametrize("compression", [None, "deflate"], ids=["direct-relay", "mitmproxy-relay-deflate"])
def test_passthrough_frames_arrive_unchanged(compression: str | None, tmp_path: Path) -> None:
    port = free_port()
    flows = tmp_path / "flows"
    proxy = start_mitmdump(tmp_path, f"http://127.0.0.1:{port}", "codexbridge_mode=passthrough",
                           "codexbridge_ping_interval=0", f"save_stream_file={flows}")

    async def go() -> None:
        async with websockets.serve(upstream_handler, "127.0.0.1", port, compression=compression, max_size=None):
            async with websockets.connect(proxy.ws_url, compression=compression, max_size=None) as ws:
                for text in ("first turn", "second turn, same socket"):
                    await ws.send(json.dumps({"type": "response.create", "model": "m", "input": text}))
                    got = [await asyncio.wait_for(ws.recv(), 10) for _ in expected(text)]
                    assert got == expected(text)
                await ws.send(json.dumps({"type": "response.create", "model": "m", "input": "close"}))
                got = [await asyncio.wait_for(ws.recv(), 10) for _ in expected("close")]
                assert got == expected("close")
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
                assert closed.value.rcvd.reason == "upstream says bye"

    try:
        asyncio.run(go())
    finally:
        proxy.stop()
    direct = "stage=direct_relay" in proxy.log
    assert direct == (compression is None), "the direct relay must run exactly when no extension was negotiated"
    with open(flows, "rb") as f:
        (flow,) = [fl for fl in mio.FlowReader(f).stream() if isinstance(fl, mhttp.HTTPFlow)]
    assert flow.websocket is not None and flow.websocket.close_code == 4001
    from_server = [m.text for m in flow.websocket.messages if not m.from_client]
    assert from_server == expected("first turn") + expected("second turn, same socket") + expected("close")
    assert [json.loads(m.text)["input"] for m in flow.websocket.messages if m.from_client] == [
        "first turn", "second turn, same socket", "close"]
