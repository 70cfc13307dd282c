"""Scale-out: two bridge workers behind a real nginx (least_conn, WebSocket-aware), and the config renderer."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import websockets

from codexbridge.tools.cluster import Cluster, render_nginx_config
from support import free_port, need, nginx_binary, start_upstream

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


def test_renderer_balances_websockets_over_any_backends(tmp_path: Path) -> None:
    conf = render_nginx_config([18081, "127.0.0.1:18082", "10.1.2.3:8080", "[::1]:9000"], tmp_path, "0.0.0.0:8080",
                               worker_processes=4)
    upstream = re.search(r"upstream codexbridge \{(.*?)\}", conf, re.S)
    assert upstream is not None
    block = upstream.group(1)
    assert re.findall(r"server (\S+)", block) == ["127.0.0.1:18081", "127.0.0.1:18082", "10.1.2.3:8080", "[::1]:9000"]
    assert "least_conn;" in block and "keepalive 64;" in block and "zone codexbridge" in block
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;", conf)
    for line in ("proxy_pass http://codexbridge;", "proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $connection_upgrade;", "proxy_set_header Host $host;",
                 "proxy_buffering off;", "proxy_read_timeout 3600s;", "proxy_send_timeout 3600s;",
                 "listen 0.0.0.0:8080", "worker_processes 4;"):
        assert line in conf, line
    assert int(re.search(r"worker_connections (\d+);", conf).group(1)) >= 8192  # type: ignore[union-attr]
    for path in re.findall(r"(?:pid|error_log|access_log|_temp_path) (\S+?)[ ;]", conf):
        assert path.startswith(str(tmp_path.resolve()) + "/"), path
    assert "pid nginx.pid;" in render_nginx_config([1], None)  # relative to `nginx -p DIR`
    for bad in (["x; include /etc/passwd"], ["host"], []):
        with pytest.raises(ValueError):
            render_nginx_config(bad)


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
