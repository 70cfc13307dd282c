"""Back-pressure through a real mitmdump: a client that stops reading pauses the upstream's stream (the
proxy does not buffer it), and once the client reads again every event arrives, in order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import websockets

from codexbridge.tools.procs import free_port
from support.mitmdump import start_mitmdump

EVENTS = 60_000
DELTA = "x" * 1000  # ~1 KB per event, ~60 MB in all: far more than the socket buffers on the way


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_pauses_the_upstream(tmp_path: Path) -> None:
    port = free_port()
    written = [0]
    finished = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        writer.write(b'data: {"type":"response.created","response":{"id":"resp_bp"}}\n\n')
        for i in range(EVENTS):
            writer.write(b'data: {"type":"response.output_text.delta","n":%d,"delta":"%s"}\n\n' % (i, DELTA.encode()))
            written[0] = i + 1
            await writer.drain()
        writer.write(b'data: {"type":"response.completed","response":{"id":"resp_bp"}}\n\n')
        await writer.drain()
        finished.set()
        writer.close()

    proxy = start_mitmdump(tmp_path, f"http://127.0.0.1:{port}", "codexbridge_ping_interval=0")

    async def go() -> None:
        server = await asyncio.start_server(upstream, "127.0.0.1", port)
        try:
            async with websockets.connect(proxy.ws_url, max_size=None, max_queue=4) as ws:
                await ws.send(json.dumps({"type": "response.create", "model": "m", "input": "go"}))
                assert json.loads(await ws.recv())["type"] == "response.created"
                await asyncio.sleep(3)  # the client reads nothing
                stalled_at = written[0]
                assert not finished.is_set() and stalled_at < EVENTS // 2, (
                    f"the upstream wrote {stalled_at} of {EVENTS} events to a client that reads nothing")
                assert rss_kb(proxy.proc.pid) < 200_000, "the proxy buffered the stream"
                seen = 0
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if event["type"] == "response.completed":
                        break
                    assert event["n"] == seen, "events out of order or lost"
                    seen += 1
                assert seen == EVENTS and finished.is_set()
        finally:
            server.close()

    try:
        asyncio.run(go())
    finally:
        proxy.stop()
