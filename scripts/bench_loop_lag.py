#!/usr/bin/env python3
"""How long a ready callback waits in the proxy's event loop under the paced load (not a test).

Starts the bench's loopback upstream and one mitmdump as `codexbridge bench` starts configuration c (or f), with
scripts/loop_lag_probe.py loaded beside the bridge, then runs the bench's paced workload with its handshake probes
and prints, side by side, the proxy's loop lag (how late a 2 ms timer fires: what any callback that became ready
waits for the loop's current turn to end) and the handshake latencies the bench client measured. A handshake needs
at least two loop turns of the proxy (the accept, then the request's bytes), so twice the lag's median is a floor
for its median that no per-connection work can go under.

Run: .venv/bin/python scripts/bench_loop_lag.py [--config c] [--rounds 2] [--sessions 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from codexbridge.tools.bench import BY_KEY, HOST, Params, Runner, cpu_seconds, mitmdump_cmd, start_child
from codexbridge.tools.procs import free_port

console = Console()
PROBE = Path(__file__).with_name("loop_lag_probe.py")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    params = Params(sessions=args.sessions)
    with tempfile.TemporaryDirectory(prefix="codexbridge-looplag-") as tmp:
        workdir = Path(tmp)
        out = workdir / "lags.json"
        os.environ["CODEXBRIDGE_LOOP_LAG_OUT"] = str(out)
        up_port = free_port()
        upstream = await start_child("upstream", [sys.executable, "-m", "codexbridge.tools.bench_servers", "--host",
                                                  HOST, "--port", str(up_port)], up_port, workdir)
        port = free_port()
        cmd = mitmdump_cmd(args.config, up_port, port, workdir / "recordings", params, workdir / "confdir")
        proxy = await start_child("mitmdump", cmd + ["-s", str(PROBE)], port, workdir, timeout=60.0)
        shakes: list[float] = []
        try:
            runner = Runner(params, Progress(console=console, transient=True), lambda m: None)
            cfg = BY_KEY[args.config]
            await runner.warm(cfg, port)
            await asyncio.sleep(1.0)
            cpu0 = cpu_seconds(proxy.proc.pid)
            for _ in range(args.rounds):
                paced, hs = await runner.paced(cfg, port, probes=True)
                assert hs is not None
                shakes += [x / 1000.0 for x in hs["raw_ms"]]
                console.print(f"paced p50 {paced['p50_s']} s, wall {paced['wall_s']} s")
                await asyncio.sleep(0.5)
            console.print(f"proxy CPU {cpu_seconds(proxy.proc.pid) - cpu0:.2f} s")
        finally:
            proxy.stop()
            upstream.stop()
        lags = json.loads(out.read_text()) if out.exists() else []
    busy = [x for x in lags if x > 0.0005]  # the samples taken while the load ran (an idle loop is late by ~0)
    console.print(f"proxy loop lag, all {len(lags)} samples: p50 {1000 * statistics.median(lags):.2f} ms, "
                  f"p90 {1000 * pct(lags, 90):.2f} ms, p99 {1000 * pct(lags, 99):.2f} ms")
    if busy:
        console.print(f"proxy loop lag, {len(busy)} samples above 0.5 ms: p50 {1000 * statistics.median(busy):.2f} ms,"
                      f" p90 {1000 * pct(busy, 90):.2f} ms")
    if shakes:
        console.print(f"handshakes ({len(shakes)}): p50 {1000 * statistics.median(shakes):.2f} ms, "
                      f"p90 {1000 * pct(shakes, 90):.2f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("c", "d", "e", "f"), default="c")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(ap.parse_args()))
