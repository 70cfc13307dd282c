"""Child processes of the tools: free ports, the shipped mitmdump scripts and command line, start, wait and stop."""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the caller binds it soon after)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", exclude: Sequence[int] = ()) -> list[int]:
    """`count` distinct TCP ports nothing listens on right now, none of them in `exclude`: all bound at once while
    they are chosen (one at a time, the system may hand the same port out twice)."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host, 0))
            if s.getsockname()[1] in exclude:
                s.close()
                continue
            held.append(s)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def listening(host: str, port: int) -> bool:
    """Something accepts connections on host:port now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_for_port(host: str, port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """True once something accepts on host:port; False at the timeout or when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if listening(host, port):
            return True
        time.sleep(0.05)
    return False


def script_path(name: str = "bridge") -> Path:
    """A mitmdump entry script shipped in the package (the repository's addons/ folder)."""
    spec = importlib.util.find_spec("codexbridge.scripts")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0] if folders else "codexbridge/scripts").resolve() / f"{name}.py"
    if not path.exists():
        raise SystemExit(f"codexbridge: the entry script {path.name} is missing from the installed package ({path})")
    return path


def mitmdump_binary() -> Path:
    """The mitmdump of the environment codexbridge runs in."""
    return Path(sys.executable).parent / "mitmdump"


def mitmdump_command(upstream: str, port: int, options: Sequence[str] = (), *, host: str = "127.0.0.1",
                     quiet: bool = False, scripts: Sequence[str] = ("bridge",), mode: str = "") -> list[str]:
    """`mitmdump -s <bridge.py> --mode reverse:UPSTREAM ...` on host:port, lazy upstream connections.

    `mode` replaces `reverse:UPSTREAM` (regular, transparent, ...); `host=""` listens on every address."""
    cmd = [str(mitmdump_binary())]
    for name in scripts:
        cmd += ["-s", str(script_path(name))]
    cmd += ["--mode", mode or f"reverse:{upstream}", "--listen-host", host, "--listen-port", str(port),
            "--set", "connection_strategy=lazy"]
    return cmd + [a for opt in options for a in ("--set", opt)] + (["-q"] if quiet else [])


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (nginx's workers, the recording worker), from /proc."""
    with contextlib.suppress(OSError, ValueError):
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@dataclass
class Child:
    """A child process of a tool, its port and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = 8.0) -> None:
        """Asks the process to end (SIGINT lets mitmdump close its recordings), kills it after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def die_with_parent() -> None:
    """A child's preexec_fn: the child gets SIGTERM when the tool that started it dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def port_in_use(host: str, port: int) -> bool:
    """Something holds host:port (listening or bound), so a server started on it now would fail to bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mitmproxy and nginx bind: TIME_WAIT is no obstacle
        try:
            s.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        except OSError:
            return True
    return False
