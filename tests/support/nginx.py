"""A real nginx in front of a loopback backend, with the WebSocket location the blog posts give."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from codexbridge.tools.procs import free_port
from support import need
from support.processes import Process, start_process


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
