"""A listen backlog that holds a connection storm: mitmproxy listens with asyncio's default of 100 pending
connections; the 101st client opening at the same moment has its SYN dropped and retries after a second (a
storm of 200 measured p95 above 1 s for that alone). Here each TCP listener mitmproxy opens gets BACKLOG (the
kernel caps it at net.core.somaxconn)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from mitmproxy import ctx
from mitmproxy.proxy import mode_servers

log = logging.getLogger("codexbridge.mitm")
BACKLOG = 4096
_stock: dict[str, Any] = {}


def deepen(servers: list[Any]) -> None:
    for server in servers:
        if not isinstance(server, asyncio.Server):
            continue  # UDP and WireGuard servers have no accept queue
        for transport_socket in server.sockets:
            try:
                sock = socket.socket(fileno=transport_socket.fileno())
            except OSError:
                continue
            try:
                sock.listen(BACKLOG)  # a listening socket takes a new backlog as it is
            except OSError as e:
                log.debug("listen backlog unchanged: %s", e)
            finally:
                sock.detach()  # the descriptor stays asyncio's


async def listen(self: Any, host: str, port: int) -> list[Any]:
    servers = await _stock["listen"](self, host, port)
    deepen(servers)
    return servers


def install() -> None:
    """Idempotent: applies to the listeners mitmproxy opens from now on, and to those it is opening while the scripts
    load (their listen call started before this patch: they are deepened as soon as they listen)."""
    if "listen" not in _stock:
        _stock["listen"] = mode_servers.AsyncioServerInstance.listen
        mode_servers.AsyncioServerInstance.listen = listen  # type: ignore[method-assign]  # installing codexbridge's replacement on mitmproxy's class is the point (checked at load)
    try:
        proxyserver = ctx.master.addons.get("proxyserver")
        loop = asyncio.get_running_loop()
    except (AttributeError, ValueError, RuntimeError):  # no running master (a tool or a test importing the addons)
        return
    instances = getattr(getattr(proxyserver, "servers", None), "_instances", None)
    if instances:
        _watch = loop.create_task(_deepen_when_listening(list(instances.values())))
        _stock["watch"] = _watch


async def _deepen_when_listening(instances: list[Any], seconds: float = 10.0) -> None:
    waiting = list(instances)
    for _ in range(int(seconds / 0.05)):
        for instance in list(waiting):
            servers = getattr(instance, "_servers", None)
            if servers:
                deepen(servers)
                waiting.remove(instance)
        if not waiting:
            return
        await asyncio.sleep(0.05)


def uninstall() -> None:
    if "listen" in _stock:
        mode_servers.AsyncioServerInstance.listen = _stock.pop("listen")  # type: ignore[method-assign]  # installing codexbridge's replacement on mitmproxy's class is the point (checked at load)
    watch = _stock.pop("watch", None)
    if watch is not None:
        watch.cancel()
