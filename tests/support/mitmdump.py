"""mitmdump with the bridge (or another entry script), on loopback, with the debug log the tests read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from codexbridge.tools.procs import free_port, mitmdump_command
from support.processes import Process, start_process

# What every test mitmdump sets besides its own options: the debug log carries the `stage=` lines tests look for.
TEST_OPTIONS = ("termlog_verbosity=debug",)


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


def start_mitmdump(tmp: Path, upstream: str, *options: str, script: str | None = None) -> Mitmdump:
    """`mitmdump -s addons/bridge.py --mode reverse:UPSTREAM --set OPTION...`; `script` replaces the bridge script."""
    port = free_port()
    cmd = mitmdump_command(upstream, port, [*TEST_OPTIONS, *options], scripts=() if script else ("bridge",))
    if script:
        cmd[1:1] = ["-s", script]
    p = start_process(cmd, port, tmp / f"mitmdump-{port}.log")
    return Mitmdump(p.child, upstream)


def posts_through_proxy(log: str) -> int:
    """Plain POST flows in a mitmdump log: a Codex that fell back to HTTP would make them."""
    return len(re.findall(r": POST http", log))
