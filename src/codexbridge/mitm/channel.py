"""A flow's connections as mitmproxy's connection handler holds them (their streams, the way into the layers),
and reading a plain connection in the socket callback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wsproto
import wsproto.events as wse
from mitmproxy import ctx, http
from mitmproxy.proxy import events

from codexbridge.mitm.messages import BridgeInjected

if TYPE_CHECKING:
    from codexbridge.mitm.layer import CodexWebsocketLayer

log = logging.getLogger("codexbridge.mitm")


def wsproto_idle(ws: wsproto.Connection) -> bool:
    """No partial frame or fragmented message inside wsproto: another reader may start at the next byte."""
    proto = getattr(ws, "_proto", None)
    try:
        decoder = proto._frame_decoder  # type: ignore[union-attr]  # wsproto internals, guarded by the AttributeError fallback
        return decoder.header is None and len(decoder.buffer) == 0 and proto._message_decoder.opcode is None  # type: ignore[union-attr]  # wsproto internals, guarded by the AttributeError fallback
    except AttributeError:
        return False


class FlowConnections:
    """The connection handler of a live flow: the streams of its client and server connections, its idle
    watchdog, and events fed into its layers as if they came from the network."""

    def __init__(self, flow: http.HTTPFlow) -> None:
        proxyserver: Any = ctx.master.addons.get("proxyserver")
        self._handler = proxyserver.connections.get(flow.client_conn.id)
        if self._handler is None:
            raise ValueError("flow is not from a live connection")
        self._loop = asyncio.get_running_loop()

    def io(self, connection: Any = None) -> Any:
        """The reader/writer pair of a connection (the client's when none is named), or None once it is gone."""
        handler = self._handler
        return handler.transports.get(connection if connection is not None else handler.client)

    def writer(self, connection: Any = None) -> asyncio.StreamWriter | None:
        io = self.io(connection)
        writer = io.writer if io is not None else None
        if writer is None or writer.is_closing():
            return None
        return writer

    def activity(self) -> None:
        self._handler.timeout_watchdog.register_activity()

    def feed_soon(self, event: events.Event) -> None:
        self._loop.create_task(self.feed(event))

    async def feed(self, event: events.Event) -> bool:
        """Hands an event to the layers; False when the client cannot be written to any more."""
        writer = self.writer()
        if writer is None and isinstance(event, BridgeInjected):
            return False  # nothing to send to; other events (server bytes) still go to the layers
        await self._handler.server_event(event)
        if writer is None or writer.is_closing():
            return False
        try:
            await writer.drain()
        except (OSError, RuntimeError):
            return False
        return True


class DirectReader(asyncio.Protocol):
    """Reads a plain connection for its layer; end of stream and flow control still go to mitmproxy's own
    protocol, so the connection ends and drains exactly as before."""

    def __init__(self, layer_: CodexWebsocketLayer, inner: asyncio.StreamReaderProtocol,
                 deliver: Callable[[bytes], None]) -> None:
        self.layer = layer_
        self.inner = inner
        self.deliver = deliver  # the layer's handler for this connection's bytes

    def data_received(self, data: bytes) -> None:
        try:
            self.deliver(data)
        except Exception:
            log.exception("stage=bridge_error client=%s; closing the connection", self.layer.context.client.peername)
            if self.layer.outbox is not None:
                self.layer.outbox.send(control=wse.CloseConnection(1011, "codexbridge internal error"))

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
