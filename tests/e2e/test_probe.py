"""`codexbridge probe` as a real subprocess against real nginx configs, codexbridge itself, and raw sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codexbridge.tools.procs import free_port
from support import BIN, ROOT, need
from support.mitmdump import start_mitmdump
from support.nginx import start_nginx
from support.processes import Process
from support.upstream import Upstream, start_upstream

PACED = "[[deltas:5]] [[pace_ms:300]] x"  # 5 deltas 300 ms apart: buffering becomes measurable
MODEL = ("--model", "gpt-5.5", "--key-env", "MOCK_KEY")

WS = "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;"
FIXED = f"proxy_http_version 1.1; {WS} proxy_buffering off; proxy_read_timeout 3600s; proxy_send_timeout 3600s;"


def probe(url: str, *args: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([str(BIN / "codexbridge"), "probe", url, *args, "--json"], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "MOCK_KEY": "sk-test"}, cwd=ROOT)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def ids(report: dict[str, Any]) -> list[str]:
    return [f["id"] for f in report["findings"]]


@pytest.fixture
def behind(module_tmp: Path) -> Iterator[Any]:
    started: list[Process] = []

    def start(app: Upstream, location: str) -> str:
        started.append(start_nginx(module_tmp, app.port, location=location))
        return f"http://127.0.0.1:{started[-1].port}/v1"

    yield start
    for p in started:
        p.stop()


# -- real nginx, one config per failure --------------------------------------------------------------------


@pytest.mark.nginx
def test_connection_header_emptied_is_a_stripped_upgrade(behind: Any, ws_upstream: Upstream) -> None:
    # nginx sends `Upgrade: websocket` but no `Connection: upgrade`; the app's handshake fails with 400.
    stripped = 'proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "";'
    code, report = probe(behind(ws_upstream, stripped))
    assert code == 1 and ids(report) == ["upgrade_stripped"]
    up = report["measurements"]["upgrade"]
    assert up["status"] == 400 and "Connection: Upgrade" in up["body"]
    assert "proxy_set_header Connection $connection_upgrade" in report["findings"][0]["fix"]


@pytest.mark.nginx
def test_http10_upstream_with_proxy_buffering_is_buffered(behind: Any, ws_upstream: Upstream) -> None:
    # nginx's default proxy_http_version 1.0: the app answers close-delimited, and `proxy_buffering on` holds
    # the whole body (and the response headers) until the end. The WebSocket still gets through.
    code, report = probe(behind(ws_upstream, f"{WS} proxy_buffering on;"), *MODEL, "--prompt", PACED)
    assert code == 1 and ids(report) == ["upgrade_ok", "websocket_streaming", "http_buffered"], ids(report)
    http = report["measurements"]["http"]
    assert http["timing"]["spread_ms"] < 50 and http["timing"]["last_ms"] > 1000
    assert http["headers_ms"] > 1000
    assert "proxy_buffering off;" in report["findings"][2]["fix"]


@pytest.mark.nginx
def test_http11_upstream_with_proxy_buffering_still_streams(behind: Any, ws_upstream: Upstream) -> None:
    # Measured: with HTTP/1.1 to the app (chunked SSE), nginx passes each chunk on despite `proxy_buffering on`.
    code, report = probe(behind(ws_upstream, f"proxy_http_version 1.1; {WS} proxy_buffering on;"), *MODEL,
                         "--prompt", PACED)
    assert code == 0 and "http_streaming" in ids(report), ids(report)


@pytest.mark.nginx
def test_short_read_timeout_closes_an_idle_websocket(behind: Any, ws_upstream: Upstream) -> None:
    t0 = time.monotonic()
    code, report = probe(behind(ws_upstream, f"proxy_http_version 1.1; {WS} proxy_read_timeout 2s;"), "--idle", "5")
    assert time.monotonic() - t0 < 5
    assert code == 1 and ids(report) == ["upgrade_ok", "idle_closed"]
    idle = report["measurements"]["idle"]
    assert 1.8 < idle["closed_ms"] / 1000 < 3.5 and idle["how"] == "eof" and idle["code"] == 1006
    assert idle["server_pings"] == 0
    assert "--set codexbridge_ping_interval=1" in report["findings"][1]["fix"]


@pytest.mark.nginx
def test_app_without_websocket_route(behind: Any, upstream: Upstream) -> None:
    code, report = probe(behind(upstream, FIXED), *MODEL)
    assert code == 1 and ids(report)[0] == "upgrade_no_route"
    finding = report["findings"][0]
    assert "codexbridge_mode=bridge" in finding["fix"] and "codexbridge_mode=reject" in finding["fix"]
    assert "Server: nginx" in finding["explanation"]  # the answer came through a proxy: say so
    assert "http_streaming_unknown" in ids(report)  # the POST works; a tiny response cannot show buffering


@pytest.mark.nginx
def test_fixed_config_is_healthy(behind: Any, ws_upstream: Upstream) -> None:
    code, report = probe(behind(ws_upstream, FIXED), *MODEL, "--prompt", PACED, "--idle", "2.5")
    assert code == 0 and report["healthy"], report["findings"]
    assert ids(report) == ["upgrade_ok", "websocket_streaming", "http_streaming", "idle_ok"]


# -- codexbridge itself, raw sockets, TLS ----------------------------------------------------------------------


def test_codexbridge_in_front_of_an_sse_only_app_is_healthy(module_tmp: Path, upstream: Upstream) -> None:
    bridge = start_mitmdump(module_tmp, upstream.url)
    try:
        code, report = probe(bridge.base_url, *MODEL, "--prompt", PACED)
    finally:
        bridge.stop()
    assert code == 0 and ids(report) == ["upgrade_ok", "websocket_streaming", "http_streaming"], report["findings"]


@pytest.fixture
def raw_server() -> Iterator[Any]:
    """A one-shot TCP server that answers the first request with fixed bytes (or nothing)."""
    servers: list[socket.socket] = []

    def start(answer: Any) -> str:
        srv = socket.create_server(("127.0.0.1", 0))
        servers.append(srv)

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                request = conn.recv(65536)
                if answer:
                    conn.sendall(answer(request))
                time.sleep(3)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{srv.getsockname()[1]}/v1"

    yield start
    for s in servers:
        s.close()


def test_swallowed_upgrade_is_a_hang(raw_server: Any) -> None:
    code, report = probe(raw_server(None), "--timeout", "1")
    assert code == 1 and ids(report) == ["upgrade_hang"]


def test_forged_accept_is_rejected(raw_server: Any) -> None:
    forged = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
             b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    code, report = probe(raw_server(lambda _: forged))
    assert code == 1 and ids(report) == ["upgrade_bad_accept"]


def test_redirect_is_reported(raw_server: Any) -> None:
    code, report = probe(raw_server(lambda _: b"HTTP/1.1 301 Moved\r\nLocation: https://x.example/v1/responses\r\n"
                                              b"Content-Length: 0\r\n\r\n"))
    assert code == 1 and ids(report) == ["upgrade_redirect"]
    assert "https://x.example/v1/responses" in report["findings"][0]["measured"]


def test_unreachable_and_usage_errors_exit_2() -> None:
    code, report = probe(f"http://127.0.0.1:{free_port()}/v1")
    assert code == 2 and ids(report) == ["unreachable"]
    proc = subprocess.run([str(BIN / "codexbridge"), "probe", "ftp://x/v1"], capture_output=True, timeout=30)
    assert proc.returncode == 2


def test_untrusted_certificate_then_trusted_with_ca(module_tmp: Path) -> None:
    cert, key = module_tmp / "cert.pem", module_tmp / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True)
    need("openssl", made.returncode == 0)
    app = start_upstream(module_tmp, "--websocket", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        url = f"https://127.0.0.1:{app.port}/v1"
        code, report = probe(url)
        assert code == 1 and ids(report) == ["tls_error"] and "--insecure" in report["findings"][0]["fix"]
        assert probe(url, "--ca", str(cert))[0] == 0
        assert probe(url, "--insecure")[0] == 0
    finally:
        app.stop()
