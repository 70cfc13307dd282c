"""The `codexbridge` command line: run the bridge, run the demo upstream."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from rich.panel import Panel
from rich.syntax import Syntax

from codexbridge import __version__
from codexbridge.tools.console import codex_config, console
from codexbridge.tools.procs import free_port, mitmdump_command, wait_for_port


def cmd_run(args: argparse.Namespace) -> int:
    children: list[subprocess.Popen[bytes]] = []
    upstream = args.upstream
    if not upstream:
        demo_port = free_port()
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "codexbridge.tools.demo_upstream", "--host", "127.0.0.1", "--port", str(demo_port)]
            )
        )
        if not wait_for_port("127.0.0.1", demo_port):
            console.print("[red]the demo upstream did not start[/red]")
            return 1
        upstream = f"http://127.0.0.1:{demo_port}"
    cmd = mitmdump_command(upstream, args.port, args.set or [], host=args.host, quiet=args.quiet)
    children.append(subprocess.Popen(cmd))
    try:
        if not wait_for_port(args.host if args.host != "0.0.0.0" else "127.0.0.1", args.port):
            console.print("[red]mitmdump did not start; see its output above[/red]")
            return 1
        base_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}/v1"
        what = "the embedded demo upstream (no API key needed)" if not args.upstream else upstream
        console.print(
            Panel.fit(
                f"codexbridge {__version__} listening on [bold]{base_url}[/bold], bridging to {what}.\n"
                "Point Codex at it with this $CODEX_HOME/config.toml, then run e.g.\n"
                "[bold]OPENAI_API_KEY=sk-anything codex exec --skip-git-repo-check \"say hi\"[/bold]",
                title="codexbridge",
            )
        )
        console.print(Syntax(codex_config(base_url), "toml", theme="ansi_dark"))
        while all(c.poll() is None for c in children):
            time.sleep(0.2)
        return next((c.returncode for c in children if c.returncode), 0) or 0
    except KeyboardInterrupt:
        return 0
    finally:
        for c in reversed(children):
            if c.poll() is None:
                c.send_signal(signal.SIGINT)
        for c in reversed(children):
            try:
                c.wait(timeout=5)
            except subprocess.TimeoutExpired:
                c.kill()


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from codexbridge.tools.demo_upstream import main as upstream_main

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.log_requests:
        argv += ["--log-requests", args.log_requests]
    upstream_main(argv)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from codexbridge.recording.schema import load

    recording = load(args.file)
    if args.against:
        from codexbridge.replay.client import replay_client

        result = asyncio.run(replay_client(recording, args.against, speed=args.speed))
        if result.ok:
            console.print(f"[green]replay matched[/green]: {result.expected} frames")
            return 0
        console.print(f"[red]replay diverged[/red]\n{result.explain()}")
        return 1
    if not args.serve:
        console.print("say --serve (be the upstream) or --against WS_URL (be the client)")
        return 2
    from codexbridge.replay.server import ReplayServer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = ReplayServer(recording, speed=args.speed, strict=args.strict)

    async def serve() -> None:
        port = await server.start(args.host, args.port)
        console.print(
            f"serving [bold]{args.file}[/bold] ({server.report.posts_total} POSTs, {server.report.turns_total} "
            f"WebSocket turns) on http://{args.host}:{port}/v1 — Ctrl-C to stop"
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(serve())
    report = server.report
    colour = "green" if report.ok else "red"
    console.print(
        f"[{colour}]served {report.posts_served}/{report.posts_total} POSTs and {report.turns_served}/"
        f"{report.turns_total} turns, {len(report.divergences)} divergence(s)[/{colour}]"
    )
    for line in report.divergences:
        console.print(f"  - {line}")
    return 0 if report.ok else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from rich.markup import escape

    from codexbridge.recording.schema import load
    from codexbridge.tools.inspect import render, summarize

    try:
        recording = load(args.file)
    except (OSError, ValueError) as e:
        console.print(f"[red]cannot read {escape(args.file)}[/red]: {escape(str(e))}")
        return 1
    if args.json:
        print(json.dumps(asdict(summarize(recording)), indent=2, ensure_ascii=False))
    else:
        render(recording, console, args.file)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from rich.markup import escape

    from codexbridge.recording.schema import load
    from codexbridge.tools.diff import diff, render

    try:
        a, b = load(args.a), load(args.b)
    except (OSError, ValueError) as e:
        console.print(f"[red]cannot read a recording[/red]: {escape(str(e))}")
        return 2
    diffs = diff(a, b, timing=args.timing)
    if args.json:
        print(json.dumps({"equivalent": not diffs, "differences": [asdict(d) for d in diffs]}, indent=2,
                         ensure_ascii=False))
    else:
        render(diffs, console, args.a, args.b)
    return 1 if diffs else 0


def cmd_probe(args: argparse.Namespace) -> int:
    from codexbridge.tools.probe import main as probe_main

    return probe_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from codexbridge.tools.bench import run as bench_run

    return bench_run(args)


def cmd_cluster(args: argparse.Namespace) -> int:
    from codexbridge.tools.cluster import run as cluster_run

    return cluster_run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codexbridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"codexbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="Run mitmdump with the bridge in reverse mode (demo upstream if none is given).")
    run.add_argument("--upstream", help="The gateway to bridge to, e.g. https://gateway.example (default: embedded demo).")
    run.add_argument("--host", default=os.environ.get("CODEXBRIDGE_HOST", "127.0.0.1"), help="Listen address.")
    run.add_argument("--port", type=int, default=int(os.environ.get("CODEXBRIDGE_PORT", "8080")), help="Listen port.")
    run.add_argument("--set", action="append", metavar="OPTION=VALUE", help="A mitmproxy/codexbridge option, repeatable.")
    run.add_argument("-q", "--quiet", action="store_true", help="Hide mitmdump's per-flow output.")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo-upstream", help="Run the demo SSE-only Responses upstream on its own.")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=18080)
    demo.add_argument("--log-requests", help="Append every received request as a JSON line to this file.")
    demo.set_defaults(func=cmd_demo_upstream)
    replay = sub.add_parser("replay", help="Serve a recording as a mock upstream, or play its client side.")
    replay.add_argument("file", help="A recording (.jsonl).")
    replay.add_argument("--serve", action="store_true", help="Be the upstream: answer POST+SSE and WebSocket mode.")
    replay.add_argument("--against", metavar="WS_URL", help="Be the client: send the recorded frames to this "
                        "bridge and compare every frame it sends back.")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=18080)
    replay.add_argument("--speed", type=float, default=0.0,
                        help="0 replays as fast as possible (default); 1 at the recorded pace; 2 twice as fast.")
    replay.add_argument("--strict", action="store_true", help="Answer a diverging request with an error.")
    replay.set_defaults(func=cmd_replay)
    inspect = sub.add_parser("inspect", help="Show one recording as a timeline, with a per-response summary.")
    inspect.add_argument("file", help="A recording (.jsonl).")
    inspect.add_argument("--json", action="store_true", help="Print only the summary, as JSON on stdout (for CI).")
    inspect.set_defaults(func=cmd_inspect)
    diff = sub.add_parser("diff", help="What changed between two recordings, ignoring ids and timestamps.")
    diff.add_argument("a", help="A recording (.jsonl).")
    diff.add_argument("b", help="Another recording (.jsonl).")
    diff.add_argument("--timing", action="store_true", help="Also compare the numbers of pings and text keepalives.")
    diff.add_argument("--json", action="store_true", help="Print the differences as JSON on stdout.")
    diff.set_defaults(func=cmd_diff)
    probe = sub.add_parser("probe", help="Check a Responses endpoint the way Codex uses it, layer by layer.")
    probe.add_argument("url", help="A Responses base URL, e.g. http://host:port/v1 ({URL}/responses is probed).")
    probe.add_argument("--model", help="Also run one tiny response over the WebSocket and over POST + SSE.")
    probe.add_argument("--key-env", default="OPENAI_API_KEY", help="Env var holding the API key (default: %(default)s).")
    probe.add_argument("--prompt", help="The prompt for --model; a longer answer measures buffering better.")
    probe.add_argument("--idle", type=float, metavar="SECONDS", help="Leave a WebSocket silent this long and report "
                       "whether and how a layer closes it.")
    probe.add_argument("--timeout", type=float, default=10, help="Seconds to wait for an answer (default: %(default)s).")
    probe.add_argument("--insecure", action="store_true", help="Do not verify the TLS certificate.")
    probe.add_argument("--ca", metavar="FILE", help="Trust this PEM CA bundle.")
    probe.add_argument("--json", action="store_true", help="Print the report as JSON on stdout (for CI).")
    probe.set_defaults(func=cmd_probe)
    bench = sub.add_parser("bench", help="Benchmark direct, plain mitmproxy, bridge, bridge+recording and "
                           "passthrough on loopback (one run, rich table, JSON).")
    bench.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test well under a minute.")
    bench.add_argument("--sessions", type=int, help="Concurrent paced sessions (default 200).")
    bench.add_argument("--idle", type=int, help="Idle sessions held open with pings (default 2000).")
    bench.add_argument("--burst", type=int, help="Deltas in the one-session burst (default 20000).")
    bench.add_argument("--repeats", type=int, help="First-event repeats over a warm connection (default 200).")
    bench.add_argument("--idle-hold", type=float, help="Seconds the idle sessions are held open (default 15).")
    bench.add_argument("--only", help="Configurations to run, from a,b,c,d,e (default: all).")
    bench.add_argument("--workloads", help="Workloads, from burst,paced,first,handshake,idle (default: all).")
    bench.add_argument("--json", metavar="FILE", help="Where to write all figures (default: codexbridge-bench.json).")
    bench.set_defaults(func=cmd_bench)
    cluster = sub.add_parser("cluster", help="Run N bridge workers behind nginx (least_conn, WebSocket-aware).")
    cluster.add_argument("--workers", type=int, default=2, help="mitmdump workers (default: %(default)s).")
    cluster.add_argument("--upstream", help="The gateway to bridge to (default: embedded demo upstream).")
    cluster.add_argument("--host", default="127.0.0.1", help="nginx listen address (default: %(default)s).")
    cluster.add_argument("--port", type=int, default=8080, help="nginx listen port (default: %(default)s).")
    cluster.add_argument("--set", action="append", metavar="OPTION=VALUE", help="A worker option, repeatable.")
    cluster.add_argument("-q", "--quiet", action="store_true", help="Workers log no per-flow lines.")
    cluster.add_argument("--print-config", action="store_true", help="Print the nginx config and exit (backends "
                         "127.0.0.1:PORT+1.. unless --backend is given; paths relative to nginx -p DIR).")
    cluster.add_argument("--backend", action="append", metavar="HOST:PORT", help="With --print-config: a worker "
                         "address (repeatable; remote hosts for a multi-machine setup).")
    cluster.set_defaults(func=cmd_cluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
