"""The bridge's own HTTP client toward the upstream: settings from mitmproxy's options, pooled."""

from __future__ import annotations

import itertools
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
    """Pooled httpx clients per settings value, closed together.

    Each settings value gets several clients used in turn: httpcore's pool does work quadratic in
    the number of connections it holds on every request start and end (encode/httpcore#1035), so
    one pool of hundreds of connections would dominate a busy proxy's time.
    """

    SHARDS = 8

    def __init__(self) -> None:
        self._clients: dict[UpstreamSettings, list[httpx.AsyncClient]] = {}
        self._turn = itertools.count()

    def client(self, settings: UpstreamSettings) -> httpx.AsyncClient:
        shards = self._clients.get(settings)
        if shards is None:
            shards = self._clients[settings] = [self._make(settings) for _ in range(self.SHARDS)]
        return shards[next(self._turn) % self.SHARDS]

    @staticmethod
    def _make(settings: UpstreamSettings) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=ssl_context(settings),
            proxy=settings.proxy,
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32, keepalive_expiry=60),
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        clients, self._clients = [c for shards in self._clients.values() for c in shards], {}
        for client in clients:
            await client.aclose()
