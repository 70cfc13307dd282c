"""Scale-out: two bridge workers behind a real nginx (least_conn, WebSocket-aware)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import websockets

from codexbridge.tools.cluster import Cluster
from codexbridge.tools.procs import free_port
from support import need
from support.nginx import nginx_binary
from support.upstream import start_upstream

pytestmark = pytest.mark.nginx

SESSIONS = 10


def create(text: str, previous: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "response.create", "model": "m", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]}
    if previous:
        frame["previous_response_id"] = previous
    return json.dumps(frame)


async def until_completed(ws: Any, timeout: float = 15) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            events.append(json.loads(await ws.recv()))
            if events[-1]["type"] in ("response.completed", "response.failed", "error"):
                return events


def test_two_workers_behind_nginx_share_sessions_and_keep_continuations(tmp_path: Path) -> None:
    need("nginx (scripts/setup.sh --test installs it)", nginx_binary() is not None)
    upstream = start_upstream(tmp_path)
    try:
        with Cluster(upstream.url, workers=2, port=free_port(), directory=tmp_path / "cluster",
                     nginx=nginx_binary(), startup_timeout=30) as cluster:

            async def session(i: int) -> tuple[list[dict[str, Any]], Any]:
                ws = await websockets.connect(cluster.ws_url, max_size=None, open_timeout=10,
                                              additional_headers={"Authorization": "Bearer sk-test"})
                await ws.send(create(f"[[deltas:20]] [[pace_ms:20]] hi {i}"))
                return await until_completed(ws), ws

            async def go() -> None:
                results = await asyncio.gather(*(session(i) for i in range(SESSIONS)))
                try:
                    for events, _ in results:
                        assert events[-1]["type"] == "response.completed", events[-1]
                        assert sum(e["type"] == "response.output_text.delta" for e in events) == 20
                    # a continuation on the same socket reaches the worker that holds the parent response
                    for events, ws in results[:4]:
                        await ws.send(create("and again", previous=events[-1]["response"]["id"]))
                        follow = await until_completed(ws)
                        assert follow[-1]["type"] == "response.completed", follow[-1]
                finally:
                    await asyncio.gather(*(ws.close() for _, ws in results), return_exceptions=True)

            asyncio.run(go())
            upgrades = [w.log.read_text(errors="replace").count("101 Switching Protocols")
                        for w in cluster.worker_procs]
            assert sum(upgrades) == SESSIONS and all(upgrades), upgrades
            access = (cluster.dir / "access.log").read_text()
            assert access.count('"GET /v1/responses HTTP/1.1" 101') == SESSIONS, access
            # each continuation went out as one POST with the parent's history (same worker, same socket)
            continued = [r for r in upstream.requests() if len((r.get("json") or {}).get("input", [])) > 1]
            assert len(continued) == 4, continued
        assert all(p.proc.poll() is not None for p in cluster.procs)
    finally:
        upstream.stop()
