"""Processes a test starts: a tools.procs.Child with its whole log as text, started once its port accepts."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from codexbridge.tools.procs import Child, wait_for_port
from support import ROOT


@dataclass
class Process:
    """A started process; `log` is everything it wrote so far (stdout and stderr)."""

    child: Child

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.child.proc

    @property
    def port(self) -> int:
        return self.child.port

    @property
    def log_path(self) -> Path:
        return self.child.log

    @property
    def log(self) -> str:
        return self.child.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        self.child.stop(signal.SIGTERM, timeout=10)


def spawn(cmd: list[str], port: int, log_path: Path) -> Child:
    """Starts `cmd` in the repository with its output in `log_path`, without waiting for it."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return Child(Path(cmd[0]).name, proc, port, log_path)


def start_process(cmd: list[str], port: int, log_path: Path) -> Process:
    """Starts `cmd` and returns once something accepts on 127.0.0.1:`port` (a mitmdump that logs: once it also
    says it is listening, i.e. it has finished starting); raises with its log if it never does."""
    p = Process(spawn(cmd, port, log_path))
    if not wait_for_port("127.0.0.1", port, timeout=30.0, proc=p.proc):
        code = p.proc.poll()
        p.stop()
        why = f"exited early with {code}" if code is not None else f"nothing listens on port {port} after 30 s"
        raise RuntimeError(f"{cmd[0]} did not start ({why}):\n{p.log}")
    if Path(cmd[0]).name == "mitmdump" and "-q" not in cmd:
        # (its socket accepts before its addons' running hooks are done: connections until then go to mitmproxy's
        # own handler, not codexbridge's fast path)
        deadline = time.monotonic() + 30.0
        while "listening at" not in p.log and p.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    return p
