"""The `codexbridge` command line: run the bridge, run the demo upstream."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax

from codexbridge import __version__
from codexbridge.tools.console import codex_config, console
from codexbridge.tools.procs import (
    die_with_parent,
    free_port,
    mitmdump_binary,
    mitmdump_command,
    port_in_use,
    script_path,
    wait_for_port,
)

if TYPE_CHECKING:
    from codexbridge.recording.schema import Recording

# What the shipped scripts import: checked before mitmdump starts, so that a missing dependency is one clear line.
ADDON_MODULES = ("codexbridge.addons.bridge", "codexbridge.addons.keepalive", "codexbridge.addons.recorder",
                 "codexbridge.addons.metrics", "prometheus_client")


class Failure(Exception):
    """A reason the command cannot go on, said in one line."""


def fail(message: str) -> int:
    console.print(f"[red]codexbridge: {escape(message)}[/red]", soft_wrap=True)
    return 1


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the command like Ctrl-C does, so that its cleanup (stopping every child) runs."""
    def interrupt(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_upstream(url: str) -> str:
    """The upstream base URL, or Failure naming what is wrong with it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise Failure(f"--upstream {url!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Failure(f"--upstream {url!r} is not an http:// or https:// URL with a host")
    return url.rstrip("/")


def check_installed() -> None:
    """mitmdump and every module the shipped scripts import are there; else Failure with the missing one."""
    if not mitmdump_binary().exists():
        raise Failure(f"mitmdump is not installed next to {sys.executable} (pip install 'mitmproxy>=12.2,<13')")
    for module in ADDON_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise Failure(f"a dependency is missing: {e} (reinstall codexbridge with pip)") from None
    try:
        script_path("bridge")
    except SystemExit as e:
        raise Failure(str(e).removeprefix("codexbridge: ")) from None


def check_port(host: str, port: int, what: str, remedy: str) -> None:
    if port_in_use(host, port):
        raise Failure(f"{what} {host}:{port} is already in use ({remedy})")


def metrics_address(options: list[str]) -> tuple[str, int] | None:
    value = next((o.split("=", 1)[1] for o in reversed(options) if o.startswith("codexbridge_metrics=")), "")
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise Failure(f"codexbridge_metrics={value} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def start_demo_upstream(children: list[subprocess.Popen[bytes]]) -> str:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "codexbridge.tools.demo_upstream", "--host", "127.0.0.1",
                             "--port", str(port)], stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    children.append(proc)
    if not wait_for_port("127.0.0.1", port, proc=proc):
        raise Failure("the demo upstream did not start; see its output above")
    return f"http://127.0.0.1:{port}"


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT (mitmdump closes its recordings), SIGKILL after 5 s; newest first."""
    for c in reversed(children):
        if c.poll() is None:
            c.send_signal(signal.SIGINT)
    for c in reversed(children):
        try:
            c.wait(timeout=5)
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait(timeout=5)


def cmd_run(args: argparse.Namespace) -> int:
    children: list[subprocess.Popen[bytes]] = []
    options = args.set or []
    local = "127.0.0.1" if args.host in ("0.0.0.0", "", "::") else args.host
    try:
        with stop_on_sigterm():
            upstream = check_upstream(args.upstream) if args.upstream else ""
            check_installed()
            check_port(args.host, args.port, "the listen address", "choose another with --port")
            metrics = metrics_address(options)
            if metrics is not None and metrics[1]:
                check_port(metrics[0], metrics[1], "the metrics address", "choose another codexbridge_metrics")
            upstream = upstream or start_demo_upstream(children)
            cmd = mitmdump_command(upstream, args.port, options, host=args.host, quiet=args.quiet)
            mitmdump = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
            children.append(mitmdump)
            if not wait_for_port(local, args.port, proc=mitmdump) or mitmdump.poll() is not None:
                raise Failure(f"mitmdump did not start (exit code {mitmdump.poll()}); see its output above")
            base_url = f"http://{local}:{args.port}/v1"
            what = "the embedded demo upstream (no API key needed)" if not args.upstream else upstream
            metrics_line = f"\nPrometheus metrics on http://{metrics[0]}:{metrics[1]}/metrics." if metrics else ""
            console.print(
                Panel.fit(
                    f"codexbridge {__version__} listening on [bold]{base_url}[/bold], bridging to {escape(what)}."
                    f"{metrics_line}\n"
                    "Point Codex at it with this $CODEX_HOME/config.toml, then run e.g.\n"
                    "[bold]OPENAI_API_KEY=sk-anything codex exec --skip-git-repo-check \"say hi\"[/bold]",
                    title="codexbridge",
                )
            )
            console.print(Syntax(codex_config(base_url), "toml", theme="ansi_dark"))
            while all(c.poll() is None for c in children):
                time.sleep(0.2)
            dead = next(c for c in children if c.poll() is not None)
            return fail(f"{'mitmdump' if dead is mitmdump else 'the demo upstream'} exited with {dead.returncode}")
    except Failure as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return 0
    finally:
        stop_children(children)


def cmd_scripts(args: argparse.Namespace) -> int:
    """Prints the paths of the mitmdump entry scripts shipped in the package, for `mitmdump -s`."""
    names = args.name or shipped_scripts()
    try:
        paths = [script_path(name) for name in names]
    except SystemExit as e:
        console.print(f"[red]{escape(str(e))}[/red] (shipped: {', '.join(shipped_scripts())})", soft_wrap=True)
        return 1
    for path in paths:
        print(path)
    return 0


def shipped_scripts() -> list[str]:
    folder = script_path("bridge").parent
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from codexbridge.tools.demo_upstream import main as upstream_main

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.log_requests:
        argv += ["--log-requests", args.log_requests]
    if args.websocket:
        argv.append("--websocket")
    if args.tls_cert:
        argv += ["--tls-cert", args.tls_cert]
    if args.tls_key:
        argv += ["--tls-key", args.tls_key]
    if args.tls_key and not args.tls_cert:
        return fail("--tls-key needs --tls-cert")
    try:
        upstream_main(argv)
    except OSError as e:
        return fail(f"the demo upstream cannot listen on {args.host}:{args.port}: {e.strerror or e}")
    except KeyboardInterrupt:
        return 0
    return 0


def load_recordings(paths: list[str]) -> Recording:
    """One recording, or several (files, or directories of .jsonl files in name order, which is start-time order)
    served as one: the first one's header, every file's events in turn."""
    from codexbridge.recording.schema import Recording, load

    files: list[str] = []
    for path in paths:
        folder = Path(path)
        files += sorted(map(str, folder.glob("*.jsonl"))) if folder.is_dir() else [path]
    if not files:
        raise ValueError(f"no .jsonl recording in {', '.join(paths)}")
    recordings = [load(f) for f in files]
    if len(recordings) == 1:
        return recordings[0]
    return Recording(header=recordings[0].header, events=[e for r in recordings for e in r.events])


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    try:
        recording = load_recordings(args.file)
    except (OSError, ValueError) as e:
        return fail(f"cannot read the recording: {e}")
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
            f"serving [bold]{escape(' '.join(args.file))}[/bold] ({server.report.posts_total} POSTs, {server.report.turns_total} "
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

    with stop_on_sigterm():
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

    scripts = sub.add_parser("scripts", help="Print the paths of the shipped mitmdump entry scripts, e.g. "
                             "mitmdump -s \"$(codexbridge scripts bridge)\".")
    scripts.add_argument("name", nargs="*", help="bridge, keepalive, record or metrics (default: all of them).")
    scripts.set_defaults(func=cmd_scripts)

    demo = sub.add_parser("demo-upstream", help="Run the demo Responses upstream (SSE only unless --websocket) on its own.")
    demo.add_argument("--host", default="127.0.0.1", help="Listen address (default: %(default)s).")
    demo.add_argument("--port", type=int, default=18080, help="Listen port (default: %(default)s).")
    demo.add_argument("--log-requests", metavar="FILE", help="Append every received request as a JSON line to this file.")
    demo.add_argument("--websocket", action="store_true", help="Also speak the Responses WebSocket mode on .../responses.")
    demo.add_argument("--tls-cert", metavar="FILE", help="Serve HTTPS/WSS with this PEM certificate (chain).")
    demo.add_argument("--tls-key", metavar="FILE", help="The PEM private key for --tls-cert.")
    demo.set_defaults(func=cmd_demo_upstream)
    replay = sub.add_parser("replay", help="Serve a recording as a mock upstream, or play its client side.")
    replay.add_argument("file", nargs="+", help="A recording (.jsonl); several files, or a directory of them, are "
                        "served one after the other (one file per HTTP exchange, as recorded in HTTP mode).")
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
    bench = sub.add_parser("bench", help="Benchmark direct, plain mitmproxy, bridge, bridge+recording, "
                           "passthrough and the bridge with a TLS client on loopback (one run, rich table, JSON).")
    bench.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test of every cell (about a minute).")
    bench.add_argument("--sessions", type=int, help="Concurrent paced sessions (default 200).")
    bench.add_argument("--idle", type=int, help="Idle sessions held open with pings (default 2000).")
    bench.add_argument("--burst", type=int, help="Deltas in the one-session burst (default 20000).")
    bench.add_argument("--repeats", type=int, help="First-event repeats over a warm connection (default 200).")
    bench.add_argument("--idle-hold", type=float, help="Seconds the idle sessions are held open (default 15).")
    bench.add_argument("--only", help="Configurations to run, from a,b,c,d,e,f,g (default: all).")
    bench.add_argument("--workloads", help="Workloads, from burst,paced,first,handshake,idle,storm (default: all).")
    bench.add_argument("--json", metavar="FILE", help="Where to write all figures (default: codexbridge-bench.json).")
    bench.add_argument("--metrics", action="store_true", help="Run every bridge and passthrough proxy with "
                       "codexbridge_metrics on (configuration g already compares metrics on and off in one run).")
    bench.set_defaults(func=cmd_bench)
    cluster = sub.add_parser("cluster", help="Run N bridge workers behind nginx (least_conn, WebSocket-aware).")
    cluster.add_argument("--workers", type=int, default=2, help="mitmdump workers (default: %(default)s).")
    cluster.add_argument("--upstream", help="The gateway to bridge to (default: embedded demo upstream).")
    cluster.add_argument("--host", default="127.0.0.1", help="nginx listen address (default: %(default)s).")
    cluster.add_argument("--port", type=int, default=8080, help="nginx listen port (default: %(default)s).")
    cluster.add_argument("--set", action="append", metavar="OPTION=VALUE", help="A worker option, repeatable.")
    cluster.add_argument("-q", "--quiet", action="store_true", help="Workers log no per-flow lines.")
    cluster.add_argument("--metrics", action="store_true", help="Each worker serves Prometheus metrics on a "
                         "127.0.0.1 port of its own (printed).")
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
