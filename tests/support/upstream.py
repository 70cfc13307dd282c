"""Loopback stand-ins for the upstream: the demo upstream (`codexbridge.tools.demo_upstream`) and a replay server."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from codexbridge.tools.procs import free_port
from support import BIN
from support.processes import Process, start_process


class Upstream(Process):
    """The loopback SSE-only mock upstream (answers 405 to any WebSocket upgrade unless started with --websocket)."""

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
    return Upstream(p.child)


class ReplayServer(Process):
    """`codexbridge replay RECORDING --serve`: the recording's upstream side, served on loopback."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def report(self) -> dict[str, Any]:
        """What it served and where the requests diverged from the recording."""
        with urllib.request.urlopen(f"{self.url}/__replay/report", timeout=5) as r:
            return json.loads(r.read())


def start_replay_server(tmp: Path, recording: Path, *flags: str) -> ReplayServer:
    port = free_port()
    p = start_process([str(BIN / "codexbridge"), "replay", str(recording), "--serve", "--port", str(port), *flags],
                      port, tmp / f"replay-{port}.log")
    return ReplayServer(p.child)
