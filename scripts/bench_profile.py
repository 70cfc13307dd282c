#!/usr/bin/env python3
"""Where a proxy's time goes (not a test): one bench workload against one configuration, sampled with py-spy.

Starts the bench's loopback upstream and one mitmdump configured as `codexbridge bench` configures it (c bridge,
d bridge recording, e passthrough, f bridge with a TLS client), warms it, then samples the proxy (and, for d,
its recording worker) with py-spy while the workload runs. Prints, per process, the functions with the most
samples: inclusive (the function and what it calls) and self (the function's own lines).

py-spy is not a dependency of codexbridge: `pip install py-spy` into the venv first.

Run: .venv/bin/python scripts/bench_profile.py --config d --workload paced [--sessions 200] [--rounds 2]
     .venv/bin/python scripts/bench_profile.py --config c --workload storm --top 30 --keep DIR
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from codexbridge.tools.bench import BY_KEY, HOST, Params, Runner, WsClient, cpu_seconds, mitmdump_cmd, start_child
from codexbridge.tools.procs import child_pids, free_port

console = Console()


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def summarize(raw: Path, top: int, title: str) -> str:
    """The collapsed stacks py-spy wrote (--format raw), as two rankings of functions."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.rsplit(" (", 1)[0] + " (" + f.rsplit(" (", 1)[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    out = [f"{title}: {total} samples"]
    for label, counter in (("inclusive", inclusive), ("self", own)):
        out.append(f"  {label}:")
        for name, n in counter.most_common(top):
            out.append(f"    {100.0 * n / max(total, 1):5.1f}%  {name}")
    return "\n".join(out)


async def workload(name: str, cfg_key: str, port: int, params: Params, rounds: int) -> None:
    cfg = BY_KEY[cfg_key]
    with Progress(console=console, transient=True) as progress:
        runner = Runner(params, progress, lambda msg: None)
        for _ in range(rounds):
            if name == "paced":
                await runner.paced(cfg, port, probes=False)
            elif name == "handshake":
                await runner.paced(cfg, port, probes=True)
            elif name == "storm":
                await runner.storm(cfg, port, None)
            elif name == "burst":
                await runner.burst(cfg, port, None)
            elif name == "first":  # turns of one delta on one warm connection
                await runner.first(cfg, port)
            elif name == "connect":  # sequential upgrades on an idle proxy: the connection path alone
                for _ in range(params.sessions):
                    client, _ = await WsClient.connect(port, tls=cfg.tls)
                    client.close()
            await asyncio.sleep(0.5)


async def main(args: argparse.Namespace) -> None:
    params = Params(sessions=args.sessions, storm=args.sessions, storm_rounds=1, burst=args.burst, burst_repeats=3)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="codexbridge-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    children = []
    spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        up_port = free_port()
        upstream = await start_child("upstream", [sys.executable, "-m", "codexbridge.tools.bench_servers", "--host",
                                                  HOST, "--port", str(up_port)], up_port, workdir)
        children.append(upstream)
        port = free_port()
        cmd = mitmdump_cmd(args.config, up_port, port, workdir / "recordings", params, workdir / "confdir")
        proxy = await start_child("mitmdump", cmd, port, workdir, timeout=60.0)
        children.append(proxy)
        await Runner(params, Progress(console=console, transient=True), lambda m: None).warm(BY_KEY[args.config], port)
        targets = [("proxy", proxy.proc.pid)] + [("recording worker", kid) for kid in child_pids(proxy.proc.pid)]
        for label, pid in targets:
            out = workdir / f"{label.replace(' ', '-')}.raw"
            spy = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
                                    "--rate", str(args.rate), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            spies.append((label, spy, out))
        await asyncio.sleep(1.0)  # py-spy attaches
        cpu0 = {pid: cpu_seconds(pid) for _, pid in targets}
        t0 = time.perf_counter()
        await workload(args.workload, args.config, port, params, args.rounds)
        wall = time.perf_counter() - t0
        for label, pid in targets:
            console.print(f"{label}: {cpu_seconds(pid) - cpu0[pid]:.2f} s CPU in {wall:.1f} s")
    finally:
        for _, spy, _ in spies:
            spy.send_signal(signal.SIGINT)
        for _, spy, _ in spies:
            try:
                spy.wait(timeout=20)
            except subprocess.TimeoutExpired:
                spy.kill()
        for child in reversed(children):
            child.stop()
    for label, _, out in spies:
        if out.exists():
            console.print(summarize(out, args.top, f"{label} ({args.config}, {args.workload})"), highlight=False)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("c", "d", "e", "f"), default="c")
    ap.add_argument("--workload", choices=("paced", "handshake", "storm", "burst", "first", "connect"), default="paced")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--burst", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", metavar="DIR", help="Keep the logs and raw profiles in DIR.")
    asyncio.run(main(ap.parse_args()))
