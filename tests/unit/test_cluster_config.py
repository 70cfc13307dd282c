"""The nginx config `codexbridge cluster` renders: WebSocket-aware least_conn over any backends, paths under its folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from codexbridge.tools import procs
from codexbridge.tools.cluster import render_nginx_config
from codexbridge.tools.procs import free_ports


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



def test_free_ports_are_distinct_and_avoid_the_excluded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6  # all bound at once while chosen

    handed_out = iter([5001, 5002, 5001, 5003])  # a system that hands out an excluded port first

    class FakeSocket:
        def __init__(self, *_: object) -> None:
            self.port = 0

        def bind(self, _: object) -> None:
            self.port = next(handed_out)

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

        def close(self) -> None:
            pass

    monkeypatch.setattr(procs.socket, "socket", FakeSocket)
    assert free_ports(2, exclude=(5001,)) == [5002, 5003]
