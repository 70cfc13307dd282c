#!/usr/bin/env python3
"""mitmproxy's own cost of a connection (not a test): the floor under any addon's connection storm figures.

Measures, on loopback, proxy CPU per connection (500 sequential connections, each one request and close) and the
time 200 clients opening at once wait for their answer, for:
  floor   mitmdump answering every request itself with a 200, from a one-line addon: no upstream, no codexbridge
  bridge  mitmdump -s bridge.py answering WebSocket upgrades (the bench's storm workload, without a turn), with
          codexbridge's listener fast path for bridged upgrades (codexbridge_fast_path) off and on
The floor runs with mitmproxy's stock hook dispatch and listen backlog, and with codexbridge's (mitm/dispatch.py,
mitm/listen.py), which the bridge always has.

Run: .venv/bin/python scripts/bench_connection_floor.py [--storm 200] [--sequential 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codexbridge.tools.bench import WsClient, cpu_seconds, median, pct
from codexbridge.tools.procs import free_port, script_path, wait_for_port

FLOOR = '''
from mitmproxy import http


class Answer:
    def request(self, flow: http.HTTPFlow) -> None:
        flow.response = http.Response.make(200, b"ok", {"Content-Type": "text/plain"})


addons = [Answer()]
'''
WITH_DISPATCH = "from codexbridge.mitm import dispatch, listen\n\ndispatch.install()\nlisten.install()\naddons = []\n"


async def plain_request(port: int) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed


async def upgrade(port: int) -> float:
    client, elapsed = await WsClient.connect(port, timeout=30.0)
    client.close()
    return elapsed


async def measure(connect, port: int, pid: int, sequential: int, storm: int, rounds: int) -> tuple[float, list[float]]:
    for _ in range(20):
        await connect(port)
    await asyncio.sleep(0.5)
    c0 = cpu_seconds(pid)
    for _ in range(sequential):
        await connect(port)
    await asyncio.sleep(0.5)
    per_connection = (cpu_seconds(pid) - c0) / sequential
    times: list[float] = []
    for _ in range(rounds):
        times += await asyncio.gather(*(connect(port) for _ in range(storm)))
        await asyncio.sleep(1.0)
    return per_connection, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storm", type=int, default=200)
    ap.add_argument("--sequential", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="codexbridge-floor-"))
    (work / "floor.py").write_text(FLOOR)
    (work / "dispatch.py").write_text(WITH_DISPATCH)
    cases = [
        ("floor, stock dispatch", ["-s", str(work / "floor.py")], plain_request),
        ("floor, codexbridge dispatch+backlog", ["-s", str(work / "floor.py"), "-s", str(work / "dispatch.py")], plain_request),
        ("bridge upgrade (c), fast path off", ["-s", str(script_path("bridge")), "--set", "codexbridge_fast_path=false"],
         upgrade),
        ("bridge upgrade (c)", ["-s", str(script_path("bridge"))], upgrade),
    ]
    for label, scripts, connect in cases:
        port = free_port()
        cmd = [str(Path(sys.executable).parent / "mitmdump"), "--mode", "reverse:http://127.0.0.1:9", "--listen-host",
               "127.0.0.1", "--listen-port", str(port), "-q", "--set", "connection_strategy=lazy", "--set",
               f"confdir={work / 'confdir'}", *scripts]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not wait_for_port("127.0.0.1", port, 30.0, proc):
                raise SystemExit(f"{label}: mitmdump did not start")
            per, times = asyncio.run(measure(connect, port, proc.pid, args.sequential, args.storm, args.rounds))
            print(f"{label:36} {per * 1000:5.2f} ms CPU per connection; {args.storm} at once: "
                  f"p50 {median(times) * 1000:4.0f} ms, p95 {pct(times, 95) * 1000:4.0f} ms")
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
