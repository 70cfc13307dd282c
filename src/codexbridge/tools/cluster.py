"""Scale-out: N independent mitmdump bridge workers behind one nginx (config renderer and local runner)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codexbridge.tools.procs import (
    Child,
    child_pids,
    die_with_parent,
    free_port,
    free_ports,
    listening,
    mitmdump_command,
    port_in_use,
    wait_for_port,
)

_ADDRESS = re.compile(r"^(unix:/[^\s;{}'\"]+|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+):\d{1,5})$")


def backend_address(backend: str | int) -> str:
    """`P` means 127.0.0.1:P; otherwise `host:port`, `[v6]:port` or `unix:/path`, checked (no config injection)."""
    text = f"127.0.0.1:{backend}" if isinstance(backend, int) or str(backend).isdigit() else str(backend).strip()
    if not _ADDRESS.match(text):
        raise ValueError(f"not a backend address (host:port, [v6]:port or unix:/path): {backend!r}")
    return text


def render_nginx_config(backends: Sequence[str | int], directory: str | Path | None = None,
                        listen: str = "127.0.0.1:8080", *, worker_processes: int | str = "auto",
                        worker_connections: int = 16384, rlimit_nofile: int | None = None, keepalive: int = 64,
                        timeout: str = "3600s") -> str:
    """The nginx.conf for `nginx -p DIR -c DIR/nginx.conf`: WebSocket-aware least_conn over `backends`.

    Logs, pid and temp files go into `directory` (relative to the `-p` prefix when None), so nginx runs
    from any writable directory. Each proxied WebSocket holds two nginx connections (client + backend).
    """
    if not backends:
        raise ValueError("at least one backend is needed")
    servers = "\n".join(f"        server {backend_address(b)} max_fails=1 fail_timeout=5s;" for b in backends)
    if not re.fullmatch(r"[\w.\-\[\]:*]+", listen):
        raise ValueError(f"not a listen address: {listen!r}")
    if worker_processes != "auto" and int(worker_processes) < 1:
        raise ValueError("worker_processes must be >= 1 or 'auto'")
    d = (str(Path(directory).resolve()).rstrip("/") + "/") if directory is not None else ""
    rlimit = f"worker_rlimit_nofile {rlimit_nofile};\n" if rlimit_nofile else ""
    return f"""# codexbridge cluster: {len(backends)} bridge worker(s) behind nginx (rendered by codexbridge.tools.cluster)
# Each WebSocket stays on the worker chosen at its upgrade, and that worker holds its continuation
# state; workers share nothing, so least_conn (or any other balancing) is correct for Codex.
worker_processes {worker_processes};
{rlimit}pid {d}nginx.pid;
lock_file {d}nginx.lock;
error_log {d}error.log warn;
events {{
    worker_connections {worker_connections};
}}
http {{
    access_log {d}access.log;
    client_body_temp_path {d}body;
    proxy_temp_path {d}proxy;
    fastcgi_temp_path {d}fastcgi;
    uwsgi_temp_path {d}uwsgi;
    scgi_temp_path {d}scgi;

    # Upgrade requests get "Connection: upgrade"; plain requests get no Connection header, so that
    # the keepalive pool below is used for them (Codex's HTTP fallback, /v1/models, ...).
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

    upstream codexbridge {{
        zone codexbridge 256k;  # least_conn counts shared by all nginx worker processes
        least_conn;
{servers}
        keepalive {keepalive};
    }}

    server {{
        listen {listen} backlog=4096;
        client_max_body_size 0;  # Codex's HTTP requests carry the whole conversation: the gateway decides
        location / {{
            proxy_pass http://codexbridge;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_connect_timeout 5s;
            proxy_read_timeout {timeout};
            proxy_send_timeout {timeout};
        }}
    }}
}}
"""


class Cluster:
    """Starts N bridge workers and nginx in front on `host:port`; a context manager that stops them all.

    The workers share nothing, and need not: continuation state (`previous_response_id`) lives with the
    WebSocket connection that created it, and a WebSocket stays on the worker nginx chose at its upgrade,
    so any choice (least_conn here) is correct for Codex; no sticky sessions or shared store. A Codex that
    reconnects elsewhere and continues an unknown id gets `previous_response_not_found` and resends the
    full input, as after a restart. Many machines: the same config with remote `host:port` backends.
    """

    def __init__(self, upstream: str, workers: int = 2, port: int = 8080, *, host: str = "127.0.0.1",
                 options: Sequence[str] = (), directory: str | Path | None = None, nginx: str | None = None,
                 quiet: bool = False, nginx_workers: int | str = "auto", startup_timeout: float = 60.0,
                 metrics: bool = False) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.upstream, self.workers, self.port, self.host = upstream, workers, port, host
        self.options, self.quiet, self.nginx_workers = list(options), quiet, nginx_workers
        self.nginx = nginx or shutil.which("nginx") or next((p for p in ["/usr/sbin/nginx"] if Path(p).exists()), None)
        self.directory, self._made_dir = directory, False
        self.dir = Path(directory or tempfile.gettempdir()).resolve()  # start() makes its own under the latter
        self.startup_timeout = startup_timeout
        self.procs: list[Child] = []
        self.worker_ports: list[int] = []
        self.metrics = metrics  # each worker serves its Prometheus metrics on a port of its own
        self.metrics_ports: list[int] = []

    @property
    def base_url(self) -> str:
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[4:] + "/responses"

    @property
    def worker_procs(self) -> list[Child]:
        return [p for p in self.procs if p.name.startswith("worker")]

    def _spawn(self, name: str, cmd: list[str], port: int) -> Child:
        with open(self.dir / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=die_with_parent)
        self.procs.append(Child(name, proc, port, self.dir / f"{name}.log"))
        return self.procs[-1]

    def _wait(self, procs: Sequence[Child], deadline: float) -> None:
        """Until each of `procs` listens; an exit (such as a port already taken by another process) raises."""
        while True:
            pending = [p for p in procs if not listening("127.0.0.1", p.port)]
            for p in procs:
                if p.proc.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pending[0].name} does not listen on {pending[0].port}:\n{pending[0].tail()}")
            time.sleep(0.05)

    def start(self) -> Cluster:
        if self.nginx is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        if self.directory is None:
            self.dir, self._made_dir = Path(tempfile.mkdtemp(prefix="codexbridge-cluster-")).resolve(), True
        self.dir.mkdir(parents=True, exist_ok=True)
        if port_in_use(self.host, self.port):
            raise RuntimeError(f"{self.host}:{self.port} is already in use (choose another with --port)")
        ports = free_ports(self.workers * (2 if self.metrics else 1), exclude=(self.port,))
        self.worker_ports, self.metrics_ports = ports[:self.workers], ports[self.workers:]
        deadline = time.monotonic() + self.startup_timeout
        try:
            cmds = [mitmdump_command(self.upstream, p, [*self.options, *self._metrics_option(i)], quiet=self.quiet)
                    for i, p in enumerate(self.worker_ports)]
            confdir = next((o.split("=", 1)[1] for o in self.options if o.startswith("confdir=")), "~/.mitmproxy")
            if not (Path(confdir).expanduser() / "mitmproxy-ca.pem").exists():  # one worker creates the CA
                self._wait([self._spawn("worker-1", cmds[0], self.worker_ports[0])], deadline)
            for i in range(len(self.procs), self.workers):
                self._spawn(f"worker-{i + 1}", cmds[i], self.worker_ports[i])
            self._wait(self.worker_procs, deadline)
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            conf = self.dir / "nginx.conf"
            conf.write_text(render_nginx_config(
                self.worker_ports, self.dir, f"{self.host}:{self.port}", worker_processes=self.nginx_workers,
                rlimit_nofile=40000 if hard == resource.RLIM_INFINITY else min(40000, hard)))
            self._wait([self._spawn("nginx", [self.nginx, "-p", str(self.dir), "-c", str(conf), "-e",
                                              str(self.dir / "error.log"), "-g", "daemon off;"], self.port)], deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _metrics_option(self, worker: int) -> list[str]:
        return [f"codexbridge_metrics=127.0.0.1:{self.metrics_ports[worker]}"] if self.metrics else []

    def pids(self) -> dict[str, list[int]]:
        """Process ids by role: each worker, and nginx (master first, then its worker processes)."""
        return {p.name: [p.proc.pid, *(child_pids(p.proc.pid) if p.name == "nginx" else [])] for p in self.procs}

    def failed(self) -> Child | None:
        """The first process that exited, if any."""
        return next((p for p in self.procs if p.proc.poll() is not None), None)

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM to nginx then the workers, SIGKILL to whatever is still running after `grace` seconds."""
        for p in reversed(self.procs):
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in reversed(self.procs):
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                orphans = child_pids(p.proc.pid)  # nginx workers would outlive a killed master
                p.proc.kill()
                p.proc.wait(timeout=5)
                for pid in orphans:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        if self._made_dir and os.environ.get("CODEXBRIDGE_KEEP_CLUSTER_DIR") is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(args: Any) -> int:
    """`codexbridge cluster`: print the nginx config, or run the cluster in the foreground until Ctrl-C."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.syntax import Syntax

    from codexbridge import __version__
    from codexbridge.tools.console import codex_config, console

    if args.print_config:
        backends = args.backend or [args.port + 1 + i for i in range(args.workers)]
        print(render_nginx_config(backends, None, f"{args.host}:{args.port}"), end="")
        return 0
    def interrupt(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}  # a clean stop
    demo: subprocess.Popen[bytes] | None = None
    upstream = args.upstream
    try:
        if port_in_use(args.host, args.port):
            raise RuntimeError(f"{args.host}:{args.port} is already in use (choose another with --port)")
        if not upstream:
            port = free_port()
            demo = subprocess.Popen([sys.executable, "-m", "codexbridge.tools.demo_upstream", "--port", str(port)],
                                    stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
            if not wait_for_port("127.0.0.1", port):
                console.print("[red]the demo upstream did not start[/red]")
                return 1
            upstream = f"http://127.0.0.1:{port}"
        with Cluster(upstream, args.workers, args.port, host=args.host, options=args.set or [],
                     quiet=args.quiet, metrics=args.metrics) as cluster:
            metrics = "".join(f"\nworker-{i + 1} metrics: http://127.0.0.1:{port}/metrics"
                              for i, port in enumerate(cluster.metrics_ports))
            console.print(Panel.fit(
                f"codexbridge {__version__} cluster on [bold]{cluster.base_url}[/bold]: nginx (least_conn) in front "
                f"of {args.workers} worker(s) on 127.0.0.1 port(s) {', '.join(map(str, cluster.worker_ports))}, "
                f"bridging to {args.upstream or 'the embedded demo upstream (no API key needed)'}.{metrics}\n"
                f"Config and logs in {cluster.dir}. Ctrl-C stops everything.", title="codexbridge cluster"))
            console.print(Syntax(codex_config(cluster.base_url), "toml", theme="ansi_dark"))
            while (dead := cluster.failed()) is None and (demo is None or demo.poll() is None):
                time.sleep(0.2)
            console.print(f"[red]{dead.name if dead else 'the demo upstream'} exited[/red]\n{dead.tail() if dead else ''}")
            return 1
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:
        console.print(f"[red]codexbridge: the cluster did not start: {escape(str(e))}[/red]", soft_wrap=True)
        return 1
    finally:
        if demo is not None and demo.poll() is None:
            demo.terminate()
            try:
                demo.wait(timeout=5)
            except subprocess.TimeoutExpired:
                demo.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
