#!/usr/bin/env python3
"""Memory of the bridge over time (not a test): RSS growth in one long session and across identical rounds.

Starts the bench upstream and a mitmdump with the shipped bridge script on loopback, then
- long: one WebSocket, TURNS turns of DELTAS deltas each; the proxy's RSS after every turn, and its growth per
  1,000 events from turn SKIP on (least squares);
- rounds: ROUNDS identical rounds of SESSIONS sessions (CONCURRENCY at a time) x TURNS_PER_SESSION turns; the
  proxy's RSS after each round, with every client gone.

Run: .venv/bin/python scripts/measure_memory.py [--workload long|rounds|both] [--set OPTION=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codexbridge.responses.events import dumps, user_message
from codexbridge.tools.bench import Turn, WsClient, rss_kb
from codexbridge.tools.bench_servers import ws_masked_frame
from codexbridge.tools.procs import free_port, mitmdump_command, wait_for_port


class DemoClient(WsClient):
    """Asks the demo upstream for its deltas with a directive (its events are larger than the bench upstream's)."""

    async def turn(self, deltas: int, pace_ms: int, timeout: float) -> Turn:
        self.writer.write(ws_masked_frame(dumps({
            "type": "response.create", "model": "memory-model",
            "input": [user_message(f"[[deltas:{deltas}]] [[pace_ms:{pace_ms}]]")]})))
        events, t0 = 0, time.monotonic()
        async with asyncio.timeout(timeout):
            while True:
                data = await self.reader.read(1 << 18)
                if not data:
                    raise ConnectionError(f"closed after {events} events")
                self.buf += data
                got, done = self._parse(time.monotonic())
                events += got
                if done:
                    return Turn(0.0, time.monotonic() - t0, events)


CLIENTS: dict[str, type[WsClient]] = {"bench": WsClient, "demo": DemoClient}
UPSTREAMS = {"bench": "codexbridge.tools.bench_servers", "demo": "codexbridge.tools.demo_upstream"}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def long_session(kind: type[WsClient], port: int, pid: int, turns: int, deltas: int, skip: int) -> dict[str, object]:
    client, _ = await kind.connect(port)
    events, rss = [0], [rss_kb(pid)]
    try:
        for _ in range(turns):
            turn = await client.turn(deltas, 0, timeout=120)
            events.append(events[-1] + turn.events)
            rss.append(rss_kb(pid))
    finally:
        client.close()
    xs, ys = events[skip:], rss[skip:]
    return {"turns": turns, "deltas": deltas, "events": events[-1], "rss_kb": rss,
            f"kb_per_1000_events_after_turn_{skip}": round(slope(xs, ys) * 1000, 1)}


async def one_session(kind: type[WsClient], port: int, turns: int, deltas: int) -> None:
    client, _ = await kind.connect(port)
    try:
        for _ in range(turns):
            await client.turn(deltas, 0, timeout=120)
    finally:
        client.close()


async def rounds(kind: type[WsClient], port: int, pid: int, n_rounds: int, sessions: int, turns: int, deltas: int,
                 concurrency: int, settle: float) -> dict[str, object]:
    await one_session(kind, port, 1, deltas)  # warm: imports, pools, first allocations
    await asyncio.sleep(settle)
    baseline = rss_kb(pid)
    after: list[int] = []
    slot = asyncio.Semaphore(concurrency)

    async def limited() -> None:
        async with slot:
            await one_session(kind, port, turns, deltas)

    for _ in range(n_rounds):
        await asyncio.gather(*(limited() for _ in range(sessions)))
        await asyncio.sleep(settle)  # every client gone, the proxy has seen each close
        after.append(rss_kb(pid))
    return {"rounds": n_rounds, "sessions": sessions, "turns": turns, "deltas": deltas, "concurrency": concurrency,
            "baseline_mb": round(baseline / 1024, 1), "after_round_mb": [round(v / 1024, 1) for v in after]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", choices=tuple(UPSTREAMS), default="bench")
    ap.add_argument("--workload", choices=("long", "rounds", "both"), default="both")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--deltas", type=int, default=4000)
    ap.add_argument("--skip", type=int, default=10, help="turns before the growth is measured")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--session-turns", type=int, default=10)
    ap.add_argument("--session-deltas", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="a mitmdump option")
    ap.add_argument("--keep-log", action="store_true", help="mitmdump logs at debug level; the report names the file")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="codexbridge-memory-"))
    up_port, port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    children: list[subprocess.Popen[bytes]] = []
    try:
        with open(workdir / "upstream.log", "wb") as out:
            children.append(subprocess.Popen([str(bin_dir / "python"), "-m", UPSTREAMS[args.upstream],
                                              "--host", "127.0.0.1", "--port", str(up_port)], stdout=out, stderr=subprocess.STDOUT))
        with open(workdir / "mitmdump.log", "wb") as out:
            options = [*args.set, "termlog_verbosity=debug"] if args.keep_log else args.set
            proxy = subprocess.Popen(mitmdump_command(f"http://127.0.0.1:{up_port}", port, options, quiet=not args.keep_log),
                                     stdout=out, stderr=subprocess.STDOUT)
        children.append(proxy)
        if not (wait_for_port("127.0.0.1", up_port, 30) and wait_for_port("127.0.0.1", port, 30, proc=proxy)):
            print((workdir / "mitmdump.log").read_text(), file=sys.stderr)
            return 1
        kind = CLIENTS[args.upstream]
        report: dict[str, object] = {"upstream": args.upstream, "options": args.set}
        t0 = time.monotonic()
        if args.workload in ("long", "both"):
            report["long"] = asyncio.run(long_session(kind, port, proxy.pid, args.turns, args.deltas, args.skip))
        if args.workload in ("rounds", "both"):
            report["rounds"] = asyncio.run(rounds(kind, port, proxy.pid, args.rounds, args.sessions, args.session_turns,
                                                  args.session_deltas, args.concurrency, args.settle))
        report["seconds"] = round(time.monotonic() - t0, 1)
        crashed = "mitmproxy has crashed" in (workdir / "mitmdump.log").read_text(errors="replace")
        report["mitmproxy_crashed"] = crashed
        if args.keep_log:
            report["log"] = str(workdir / "mitmdump.log")
        print(json.dumps(report))
        return 0
    finally:
        for child in reversed(children):
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
