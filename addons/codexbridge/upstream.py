"""The bridge's own HTTP client toward the upstream: settings from mitmproxy's options, pooled."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import httpx

logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """How to reach upstreams; mirrors the mitmproxy options that govern its own server side."""

    ssl_insecure: bool = False
    trusted_ca: str | None = None  # ssl_verify_upstream_trusted_ca: a PEM file
    trusted_confdir: str | None = None  # ssl_verify_upstream_trusted_confdir: a c_rehash folder
    proxy: str | None = None  # from --mode upstream:URL
    connect_timeout: float = 10.0
    read_timeout: float = 300.0


def ssl_context(settings: UpstreamSettings) -> ssl.SSLContext | bool:
    if settings.ssl_insecure:
        return False
    if not (settings.trusted_ca or settings.trusted_confdir):
        return True
    ctx = ssl.create_default_context(cafile=settings.trusted_ca, capath=settings.trusted_confdir)
    return ctx


class UpstreamPool:
    """One pooled httpx client per settings value, closed together."""

    def __init__(self) -> None:
        self._clients: dict[UpstreamSettings, httpx.AsyncClient] = {}

    def client(self, settings: UpstreamSettings) -> httpx.AsyncClient:
        client = self._clients.get(settings)
        if client is None:
            client = httpx.AsyncClient(
                verify=ssl_context(settings),
                proxy=settings.proxy,
                timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout, pool=None),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=60),
                follow_redirects=False,
                trust_env=False,
            )
            self._clients[settings] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
