"""Prometheus metrics after a scripted run of completed, failed, erroring and abandoned turns, scraped for real."""

from __future__ import annotations

import asyncio
import json
import shutil
import socketserver
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from codexbridge.tools.cluster import Cluster
from codexbridge.tools.demo_upstream import Plan, events_for
from codexbridge.tools.procs import free_port, mitmdump_command
from support import need, wait_for
from support.mitmdump import TEST_OPTIONS, Mitmdump
from support.nginx import nginx_binary
from support.processes import start_process
from support.rawws import RawWebSocket
from support.turns import create, turn
from support.upstream import Upstream

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def start(tmp: Path, upstream: str, scripts: tuple[str, ...], *options: str) -> tuple[Mitmdump, int]:
    port, metrics = free_port(), free_port()
    cmd = mitmdump_command(upstream, port, [*TEST_OPTIONS, f"codexbridge_metrics=127.0.0.1:{metrics}", *options],
                           scripts=scripts)
    return Mitmdump(start_process(cmd, port, tmp / f"mitmdump-{port}.log").child, upstream), metrics


async def abandon(port: int, text: str) -> None:
    """A turn the client leaves after its first event."""
    ws = await RawWebSocket.connect(port)
    await ws.send_json(create(text))
    assert (await ws.recv_json())["type"] == "response.created"
    ws.abort()


def post_turn(base_url: str, text: str) -> bytes:
    """Codex in HTTP mode: one streaming POST, read to its end."""
    body = json.dumps({"model": "m", "stream": True, "input": text}).encode()
    req = urllib.request.Request(f"{base_url}/responses", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"})
    with urllib.request.urlopen(req, timeout=15) as r:
        return r.read()


def settled(port: int, check: Callable[[Samples], bool]) -> Samples:
    """The scrape once `check` holds (session ends reach the counters a moment after the client saw them)."""
    found: list[Samples] = []

    def ok() -> bool:
        found[:] = [scrape(port)]
        return check(found[0])

    asyncio.run(wait_for(ok, 10))
    return found[0]


def scrape_after(proxy: Mitmdump, port: int, clients: Callable[[], Coroutine[Any, Any, None]],
                 check: Callable[[Samples], bool]) -> Samples:
    """Runs the clients against the proxy, then scrapes once `check` holds; the proxy is stopped either way."""
    try:
        asyncio.run(clients())
        return settled(port, check)
    finally:
        proxy.stop()


def test_bridge_metrics_count_completed_failed_erroring_and_abandoned_turns(tmp_path: Path, upstream: Upstream) -> None:
    proxy, metrics = start(tmp_path, upstream.url, ("bridge",), "codexbridge_ping_interval=2",
                           "codexbridge_ping_timeout=1")

    async def go() -> None:
        ws = await RawWebSocket.connect(proxy.port)
        assert (await turn(ws, "one"))[-1].startswith('{"type":"response.completed"')
        assert (await turn(ws, "[[failed]] two"))[-1].startswith('{"type":"response.failed"')
        assert (await turn(ws, "[[error:429]] three"))[-1].startswith('{"type":"error"')
        await asyncio.sleep(2.8)  # one ping, answered
        await ws.close()
        await abandon(proxy.port, "[[sleep:5]] slow")
        deaf = await RawWebSocket.connect(proxy.port, answer_pings=False)
        await turn(deaf, "then silence")
        async with asyncio.timeout(8):
            await deaf.closed.wait()  # closed for its late pong
        assert deaf.close_code == 1011
        assert b"response.completed" in await asyncio.to_thread(post_turn, proxy.base_url, "over http")

    samples = scrape_after(proxy, metrics, go, lambda s: value(s, "codexbridge_sessions_open", mode="bridge") == 0
                           and value(s, "codexbridge_responses_total", outcome="client_gone") == 1)

    assert value(samples, "codexbridge_sessions_total", mode="bridge") == 3
    assert value(samples, "codexbridge_sessions_total", mode="http") == 1
    assert value(samples, "codexbridge_sessions_open", mode="http") == 0
    assert value(samples, "codexbridge_responses_total", outcome="completed") == 3  # one, then silence, over http
    assert value(samples, "codexbridge_responses_total", outcome="failed") == 1
    assert value(samples, "codexbridge_responses_total", outcome="error") == 1
    assert value(samples, "codexbridge_responses_total", outcome="client_gone") == 1
    assert value(samples, "codexbridge_error_frames_total", code="rate_limit_exceeded") == 1
    assert value(samples, "codexbridge_upstream_responses_total", status="200") == 5
    assert value(samples, "codexbridge_upstream_responses_total", status="429") == 1
    assert value(samples, "codexbridge_response_duration_seconds_count") == 6
    assert value(samples, "codexbridge_first_event_seconds_count") == 5  # the 429 had no event
    assert value(samples, "codexbridge_ping_rtt_seconds_count") >= 1
    assert value(samples, "codexbridge_pong_timeouts_total") == 1
    assert value(samples, "codexbridge_frames_total", direction="from_client") == 5
    assert value(samples, "codexbridge_frames_total", direction="to_client") > 5
    assert value(samples, "codexbridge_frame_bytes_total", direction="to_client") > 500
    assert value(samples, "codexbridge_recording_failures_total") == 0


def test_metrics_of_relayed_sessions_with_the_keepalive_script(tmp_path: Path, ws_upstream: Upstream) -> None:
    proxy, metrics = start(tmp_path, ws_upstream.url, ("keepalive", "metrics"))

    async def go() -> None:
        ws = await RawWebSocket.connect(proxy.port)
        assert (await turn(ws, "one"))[-1].startswith('{"type":"response.completed"')
        assert (await turn(ws, "[[failed]] two"))[-1].startswith('{"type":"response.failed"')
        await ws.close()
        await abandon(proxy.port, "[[sleep:5]] slow")

    samples = scrape_after(proxy, metrics, go, lambda s: value(s, "codexbridge_sessions_open", mode="passthrough") == 0
                           and value(s, "codexbridge_sessions_total", mode="passthrough") == 2)
    assert value(samples, "codexbridge_sessions_total", mode="bridge") == 0
    assert value(samples, "codexbridge_upstream_responses_total", status="101") == 2
    assert value(samples, "codexbridge_responses_total", outcome="completed") == 1
    assert value(samples, "codexbridge_responses_total", outcome="failed") == 1
    assert value(samples, "codexbridge_responses_total", outcome="client_gone") == 1
    assert value(samples, "codexbridge_first_event_seconds_count") == 3
    assert value(samples, "codexbridge_frames_total", direction="from_client") == 3


class LingeringUpstream(socketserver.ThreadingTCPServer):
    """An SSE upstream that sends a whole response, terminal event included, and ends the body only `linger`
    seconds later (a gateway's last chunk can come after the client has its answer and has left)."""

    daemon_threads = True

    def __init__(self, linger: float) -> None:
        self.linger = linger
        super().__init__(("127.0.0.1", 0), self.Answer)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    class Answer(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, rest = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(rest)
            self.rfile.read(length)
            body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e, separators=(",", ":"))}\n\n".encode()
                            for e in events_for(Plan(), 1, "m", 1) if isinstance(e, dict))
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                             b"\r\n" + b"%x\r\n%s\r\n" % (len(body), body))
            self.wfile.flush()
            time.sleep(self.server.linger)  # type: ignore[attr-defined]  # the server is a LingeringUpstream
            self.wfile.write(b"0\r\n\r\n")


def test_a_completed_response_whose_client_leaves_before_the_upstream_body_ends_counts_as_completed(
        tmp_path: Path) -> None:
    upstream = LingeringUpstream(linger=3)
    proxy, metrics = start(tmp_path, upstream.url, ("bridge",))

    async def go() -> None:
        ws = await RawWebSocket.connect(proxy.port)
        assert (await turn(ws, "one"))[-1].startswith('{"type":"response.completed"')
        await ws.close()  # at once: the upstream body is still open, and the bridge cancels its read

    try:
        samples = scrape_after(proxy, metrics, go, lambda s: value(s, "codexbridge_response_duration_seconds_count") == 1)
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert value(samples, "codexbridge_responses_total", outcome="completed") == 1
    assert value(samples, "codexbridge_responses_total", outcome="client_gone") == 0


def test_a_recording_the_worker_cannot_write_counts_as_a_recording_failure(tmp_path: Path, upstream: Upstream) -> None:
    rec_dir = tmp_path / "rec"
    proxy, metrics = start(tmp_path, upstream.url, ("bridge",), f"codexbridge_record={rec_dir}")
    assert asyncio.run(wait_for(rec_dir.exists, 10))  # made and checked at startup...
    shutil.rmtree(rec_dir)  # ...and gone by the time a session is recorded

    async def go() -> None:
        ws = await RawWebSocket.connect(proxy.port)
        assert (await turn(ws, "one"))[-1].startswith('{"type":"response.completed"')  # the session goes on
        await ws.close()

    samples = scrape_after(proxy, metrics, go, lambda s: value(s, "codexbridge_recording_failures_total") >= 1)
    assert value(samples, "codexbridge_recording_failures_total") == 1
    assert "RECORDING FAILED" in proxy.log


@pytest.mark.nginx
def test_cluster_serves_each_workers_metrics_on_a_port_of_its_own(tmp_path: Path, upstream: Upstream) -> None:
    need("nginx", nginx_binary() is not None)

    async def sessions(port: int) -> None:
        for i in range(4):
            ws = await RawWebSocket.connect(port)
            assert (await turn(ws, f"turn {i}"))[-1].startswith('{"type":"response.completed"')
            await ws.close()

    with Cluster(upstream.url, workers=2, port=free_port(), directory=tmp_path / "cluster", metrics=True,
                 nginx=nginx_binary()) as cluster:
        assert len(set(cluster.metrics_ports)) == 2
        asyncio.run(sessions(cluster.port))
        per_worker: list[Samples] = []

        def all_counted() -> bool:  # a worker counts a session's end, and its response's, a moment after the client
            try:
                per_worker[:] = [scrape(p) for p in cluster.metrics_ports]
            except urllib.error.HTTPError as e:  # who answered, if not a worker's metrics server
                raise AssertionError(f"{e.url}: {e.code}, Server: {e.headers.get('Server')!r}, {e.read()[:200]!r}; "
                                     f"front {cluster.port}, workers {cluster.worker_ports}, "
                                     f"metrics {cluster.metrics_ports}") from e
            return (all(value(s, "codexbridge_sessions_open", mode="bridge") == 0 for s in per_worker)
                    and sum(value(s, "codexbridge_response_duration_seconds_count") for s in per_worker) >= 4)

        asyncio.run(wait_for(all_counted, 10))
    counts = [(value(s, "codexbridge_sessions_total", mode="bridge"),
               value(s, "codexbridge_responses_total", outcome="completed"),
               value(s, "codexbridge_responses_total", outcome="client_gone")) for s in per_worker]
    assert sum(c[0] for c in counts) == 4, counts  # (sessions, completed, client_gone) per worker
    assert sum(c[1] for c in counts) == 4, counts
