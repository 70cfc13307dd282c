#!/usr/bin/env python3
"""Scale-out measurement (not a test): direct vs one bridge worker vs nginx + 1 and + 2 workers, one run.

Uses the lean clients and the loopback upstream of `codexbridge bench` (codexbridge.tools.bench, bench_servers):
  a  direct      the client talks POST + SSE to the upstream (the bridge's own baseline, bench's a_sse)
  d  1 worker    WebSocket to one mitmdump -s bridge.py, no nginx
  b  nginx + 1   WebSocket to nginx (codexbridge.tools.cluster config) in front of one worker
  c  nginx + 2   the same with two workers (least_conn)
Workloads: paced (S sessions × 100 deltas 20 ms apart, started together: completion p50/p99), run twice on
the same processes: "cold" right after start, "warm" once the worker's upstream pool holds the S keep-alive
connections of the cold run (a long-running worker's normal state); burst (one session, N deltas as fast
as possible: events/s) and burst×K (K such sessions at once: aggregate events/s, the one a second worker
can help with). Every round starts every configuration afresh; rounds interleave the configurations.
CPU per process from /proc/<pid>/stat (utime + stime) around each window, in % of one core; "other" is
everything else on the machine (/proc/stat minus these processes); nginx = master + its workers.

Run: .venv/bin/python scripts/bench_scaleout.py [--sessions 200] [--burst 20000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from codexbridge.tools.bench import (
    BenchError,
    Quiet,
    SseClient,
    WsClient,
    busy_seconds,
    cpu_seconds,
    machine_info,
    median,
    pct,
    raise_nofile,
    start_child,
)
from codexbridge.tools.cluster import Cluster, child_pids, mitmdump_command
from codexbridge.tools.procs import free_port

CONFIGS = {"a": "a direct (SSE)", "d": "d 1 worker, no nginx", "b": "b nginx + 1 worker", "c": "c nginx + 2 workers"}


class Cpu:
    """Per-role CPU seconds (utime + stime) summed over windows, as % of one core; "other" is the rest of the machine."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = roles
        self.wall = 0.0
        self.used = {r: 0.0 for r in [*roles, "other"]}

    def _sample(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.roles.items()}

    def __enter__(self) -> Cpu:
        self.t0, self.c0, self.b0 = time.perf_counter(), self._sample(), busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self.t0
        ours = 0.0
        for r, v in self._sample().items():
            self.used[r] += v - self.c0[r]
            ours += v - self.c0[r]
        self.used["other"] += max(0.0, busy_seconds() - self.b0 - ours)

    @property
    def percent(self) -> dict[str, int]:
        return {r: round(100 * v / self.wall) for r, v in self.used.items()} if self.wall else {}


async def connect(ws: bool, port: int) -> WsClient | SseClient:
    return (await WsClient.connect(port))[0] if ws else (await SseClient.connect(port))[0]


async def paced(ws: bool, port: int, sessions: int) -> tuple[float, float, int]:
    sem = asyncio.Semaphore(50)

    async def opened() -> WsClient | SseClient:
        async with sem:
            return await connect(ws, port)

    clients = await asyncio.gather(*(opened() for _ in range(sessions)))
    try:
        turns = await asyncio.gather(*(c.turn(100, 20, 60.0) for c in clients), return_exceptions=True)
    finally:
        for c in clients:
            c.close()
    done = [t.total for t in turns if not isinstance(t, BaseException) and t.events == 102]
    return median(done) or 0.0, pct(done, 99) or 0.0, sessions - len(done)


async def burst(ws: bool, port: int, deltas: int, parallel: int) -> float:
    clients = [await connect(ws, port) for _ in range(parallel)]
    try:
        t0 = time.perf_counter()
        turns = await asyncio.gather(*(c.turn(deltas, 0, 120.0) for c in clients))
        wall = time.perf_counter() - t0
    finally:
        for c in clients:
            c.close()
    if any(t.events != deltas + 2 for t in turns):
        raise BenchError(f"short burst: {[t.events for t in turns]}")
    return sum(t.events for t in turns) / wall


WINDOWS = ("paced_cold", "paced_warm", "burst_k")


async def settle(pids: list[int], limit: float = 10.0) -> None:
    """Waits until the proxies and the upstream are idle again (teardown of the previous workload)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = sum(cpu_seconds(p) for p in pids)
        await asyncio.sleep(0.3)
        if sum(cpu_seconds(p) for p in pids) - c0 < 0.02:
            return


async def measure(key: str, port: int, roles: dict[str, list[int]], args: argparse.Namespace,
                  out: dict[str, Any]) -> None:
    """One round of every workload on freshly started processes; appends to `out`."""
    ws = key != "a"
    servers = [p for r, pids in roles.items() if r != "client" for p in pids]
    await burst(ws, port, args.burst, 1)  # warm: imports, caches (one pooled upstream connection)
    quiet = Quiet(args.quiet_wait, lambda: [p for pids in roles.values() for p in pids])
    out.setdefault("foreign_at_start", []).append(round(100 * await quiet.wait(threshold=0.2, limit=args.quiet_wait)))
    cpu = {w: Cpu(roles) for w in WINDOWS}
    for window in ("paced_cold", "paced_warm"):
        await settle(servers)
        with cpu[window]:
            p50, p99, lost = await paced(ws, port, args.sessions)
        out.setdefault(f"{window}_p50", []).append(p50)
        out.setdefault(f"{window}_p99", []).append(p99)
        out["lost"] = out.get("lost", 0) + lost
    for _ in range(3):
        await settle(servers)
        out.setdefault("burst", []).append(await burst(ws, port, args.burst, 1))
    for _ in range(2):
        await settle(servers)
        with cpu["burst_k"]:
            out.setdefault("burst_k", []).append(await burst(ws, port, args.burst, args.parallel))
    for w in WINDOWS:
        out.setdefault(f"cpu_{w}", []).append(cpu[w].percent)
    print(f"  {CONFIGS[key]}: paced cold {out['paced_cold_p50'][-1]:.3f} s, warm {out['paced_warm_p50'][-1]:.3f} s, "
          f"burst {median(out['burst'][-3:]):,.0f} ev/s, burst×{args.parallel} {median(out['burst_k'][-2:]):,.0f} "
          f"ev/s; cpu% {' | '.join(f'{w} {cpu[w].percent}' for w in WINDOWS)}", file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="codexbridge-scaleout-"))
    up_port = free_port()
    upstream = await start_child("upstream", [sys.executable, "-m", "codexbridge.tools.bench_servers", "--host", "127.0.0.1",
                                              "--port", str(up_port)], up_port, work)
    url = f"http://127.0.0.1:{up_port}"
    results: dict[str, Any] = {k: {} for k in args.only}
    try:
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for key in args.only:
                roles = {"client": [os.getpid()], "upstream": [upstream.proc.pid]}
                if key == "a":
                    await measure(key, up_port, roles, args, results[key])
                elif key == "d":
                    port = free_port()
                    worker = await start_child(f"worker-d{rnd}", mitmdump_command(url, port, quiet=True), port, work, 60)
                    try:
                        await measure(key, port, roles | {"worker-1": [worker.proc.pid]}, args, results[key])
                    finally:
                        worker.stop()
                else:
                    cluster = Cluster(url, 1 if key == "b" else 2, free_port(), quiet=True,
                                      directory=work / f"{key}{rnd}", nginx_workers=args.nginx_workers)
                    await asyncio.to_thread(cluster.start)
                    try:
                        pids = cluster.pids()
                        nginx = pids.pop("nginx")
                        roles |= {"nginx": [nginx[0], *child_pids(nginx[0])]} | pids
                        await measure(key, cluster.port, roles, args, results[key])
                    finally:
                        await asyncio.to_thread(cluster.stop)
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def tables(results: dict[str, Any], args: argparse.Namespace) -> str:
    base = results.get("a")
    cols = [("paced_cold_p50", "paced p50, cold (s)", "{:.3f}"), ("paced_cold_p99", "p99, cold (s)", "{:.3f}"),
            ("paced_warm_p50", "paced p50, warm (s)", "{:.3f}"), ("paced_warm_p99", "p99, warm (s)", "{:.3f}"),
            ("burst", "burst, 1 session (ev/s)", "{:,.0f}"), ("burst_k", f"burst×{args.parallel} aggregate (ev/s)",
                                                               "{:,.0f}")]
    rows = ["| configuration | " + " | ".join(c[1] for c in cols) + " | lost |", "|---" * (len(cols) + 2) + "|"]
    for key, r in results.items():
        cells = []
        for name, _, f in cols:
            v = median(r[name])
            ratio = f" (×{v / median(base[name]):.2f})" if base and key != "a" and "p99" not in name else ""
            cells.append(f.format(v) + ratio)
        rows.append(f"| {CONFIGS[key]} | " + " | ".join(cells) + f" | {r['lost']} |")
    rows += ["", "CPU, % of one core (2 cores = 200 %), averaged over the rounds:", "",
             f"| configuration | paced, cold | paced, warm | burst×{args.parallel} |", "|---|---|---|---|"]
    for key, r in results.items():
        cells = []
        for w in WINDOWS:
            samples = r[f"cpu_{w}"]
            avg = {role: round(sum(s.get(role, 0) for s in samples) / len(samples)) for role in samples[0]}
            cells.append(", ".join(f"{k} {v}" for k, v in avg.items()) + f" (Σ {sum(avg.values())})")
        rows.append(f"| {CONFIGS[key]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--burst", type=int, default=20_000)
    ap.add_argument("--parallel", type=int, default=4, help="concurrent sessions of the aggregate burst")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nginx-workers", default="auto")
    ap.add_argument("--only", default="adbc", help="configurations in order, from a, d, b, c")
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="max seconds to wait, before each configuration, "
                    "for other processes on the machine to use < 20%% of a core")
    ap.add_argument("--json", help="also write the raw figures here")
    ns = ap.parse_args()
    ns.only = [k for k in ns.only if k in CONFIGS]
    m = machine_info()
    t0 = time.monotonic()
    res = asyncio.run(asyncio.wait_for(main(ns), 1800))
    print(f"{m['cpu_count']} × {m['cpu_model']}, Python {m['python']}, mitmproxy {m['mitmproxy']}; {ns.sessions} paced "
          f"sessions × 100 deltas / 20 ms (ideal 2.0 s), burst {ns.burst:,} deltas; medians over {ns.rounds} fresh "
          f"rounds; nginx worker_processes {ns.nginx_workers}; ratios to a; {time.monotonic() - t0:.0f} s\n")
    print(tables(res, ns))
    if ns.json:
        Path(ns.json).write_text(json.dumps({"machine": m, "params": vars(ns), "results": res}, indent=1))
