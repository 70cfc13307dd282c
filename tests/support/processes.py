"""Real processes for end-to-end tests: the mock upstream, mitmdump with the bridge, the Codex CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


async def wait_for(pred: Any, timeout: float) -> bool:
    """Polls a condition from async test code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


def need(what: str, available: bool) -> None:
    """Skips a test whose real component is missing, except in CI, where that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available")


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_process(cmd: list[str], port: int, log_path: Path) -> Process:
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    log.close()
    p = Process(proc, port, log_path)
    try:
        wait_for_port(port, proc)
    except Exception:
        p.stop()
        raise RuntimeError(f"{cmd[0]} did not start:\n{p.log}")
    return p


class Upstream(Process):
    """The loopback SSE-only mock upstream (answers 405 to any WebSocket upgrade)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def requests(self) -> list[dict[str, Any]]:
        return self._get("/__mock/requests")

    def stats(self) -> dict[str, int]:
        return self._get("/__mock/stats")

    def reset(self) -> None:
        self._get("/__mock/reset", "POST")


def start_upstream(tmp: Path, *flags: str) -> Upstream:
    """The mock upstream; flags such as --websocket (it then speaks the WebSocket mode too) or --tls-cert."""
    port = free_port()
    p = start_process(
        [str(BIN / "python"), "-m", "codexbridge.tools.demo_upstream", "--host", "127.0.0.1", "--port", str(port), *flags],
        port,
        tmp / f"upstream-{port}.log",
    )
    return Upstream(p.proc, p.port, p.log_path)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


NGINX_CONF = """
worker_processes 1;
error_log {tmp}/error.log info;
pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_set_header Host $host;
            {location}
        }}
    }}
}}
"""


# The usual WebSocket location (the blog post's), without timeouts: tests add their own.
NGINX_WEBSOCKET_LOCATION = (
    "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
    "proxy_set_header Connection $connection_upgrade; proxy_buffering off;"
)


def start_nginx(tmp: Path, backend: int, extra: str = "", location: str = NGINX_WEBSOCKET_LOCATION) -> Process:
    """A real nginx in front of `backend`: `location` directives (the WebSocket ones by default) plus `extra`."""
    binary = nginx_binary()
    need("nginx (scripts/setup.sh --test installs it)", binary is not None)
    assert binary is not None
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="nginx-", dir=tmp))
    conf = home / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=home, port=port, backend=backend, location=f"{location} {extra}"))
    return start_process([binary, "-p", str(home), "-c", str(conf), "-g", "daemon off;"], port, home / "stdout.log")


@dataclass
class Mitmdump(Process):
    upstream: str = ""
    upgrades_seen: int = 0
    session_log: str = ""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def start_mitmdump(tmp: Path, upstream: str, *options: str, script: str = "addons/bridge.py") -> Mitmdump:
    port = free_port()
    cmd = [
        str(BIN / "mitmdump"), "-s", str(ROOT / script),
        "--mode", f"reverse:{upstream}", "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", "connection_strategy=lazy", "--set", "termlog_verbosity=debug",
    ]
    for opt in options:
        cmd += ["--set", opt]
    p = start_process(cmd, port, tmp / f"mitmdump-{port}.log")
    return Mitmdump(p.proc, p.port, p.log_path, upstream)


def codex_binary() -> str | None:
    explicit = os.environ.get("CODEXBRIDGE_CODEX")
    if explicit:
        return explicit
    local = ROOT / ".tools" / "codex" / "node_modules" / ".bin" / "codex"
    if local.exists():
        return str(local)
    return shutil.which("codex")


def quiet_codex_config(instructions: Path) -> str:
    """Config keys that keep Codex offline and its requests free of its own long texts."""
    return f"""
model_instructions_file = "{instructions}"
include_permissions_instructions = false
include_apps_instructions = false
include_collaboration_mode_instructions = false
include_environment_context = false
project_doc_max_bytes = 0
web_search = "disabled"
check_for_update_on_startup = false
[skills]
include_instructions = false
[agents]
enabled = false
[tools.experimental_request_user_input]
enabled = false
[analytics]
enabled = false
[features]
plugins = false
shell_snapshot = false
goals = false
view_image = false
unbounded_connection_retries = false
"""


@dataclass
class CodexRun:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Codex:
    """The real Codex CLI with its own CODEX_HOME pointing at a base URL."""

    binary: str
    home: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, tmp: Path) -> Codex:
        binary = codex_binary()
        need("the Codex CLI (scripts/setup.sh --test installs it)", binary is not None)
        assert binary is not None
        home = Path(tempfile.mkdtemp(prefix="codex-home-", dir=tmp))
        work = Path(tempfile.mkdtemp(prefix="codex-work-", dir=tmp))
        return cls(binary, home, work)

    def configure(self, base_url: str, websockets: bool = True, extra: str = "",
                  provider: dict[str, Any] | None = None) -> None:
        settings: dict[str, Any] = {
            "name": "Local mock",
            "base_url": base_url,
            "env_key": "MOCK_API_KEY",
            "wire_api": "responses",
            "request_max_retries": 0,
            "stream_max_retries": 1,
            "supports_websockets": websockets,
            **(provider or {}),
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        (self.home / "config.toml").write_text(
            'model = "gpt-5.5"\nmodel_provider = "mock"\n' + extra + "\n[model_providers.mock]\n" + "\n".join(lines) + "\n"
        )

    def run(self, *args: str, timeout: float = 120) -> CodexRun:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "CODEX_HOME": str(self.home),
            "MOCK_API_KEY": "sk-test-codexbridge",
            "NO_COLOR": "1",
            **self.env,
        }
        proc = subprocess.run(
            [self.binary, *args], cwd=self.workdir, env=env, capture_output=True, timeout=timeout, text=True,
            stdin=subprocess.DEVNULL,
        )
        return CodexRun(proc.returncode, proc.stdout, proc.stderr)

    def exec(self, prompt: str, *extra: str, timeout: float = 120) -> CodexRun:
        return self.run("exec", "--skip-git-repo-check", "--sandbox", "danger-full-access", *extra, prompt,
                        timeout=timeout)
