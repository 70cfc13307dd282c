"""Direct socket I/O for a flow: writing to a client (straight to a plain socket, through the layers over TLS)
and reading a plain connection in the socket callback."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import wsproto
from mitmproxy import ctx, http
from mitmproxy.proxy import events

from codexbridge.mitm.messages import BridgeInjected, placeholder_message

if TYPE_CHECKING:
    from codexbridge.mitm.keepalive_driver import KeepaliveDriver
    from codexbridge.mitm.layer import CodexWebsocketLayer

log = logging.getLogger("codexbridge.mitm")


def wsproto_idle(ws: wsproto.Connection) -> bool:
    """No partial frame or fragmented message inside wsproto: another reader may start at the next byte."""
    proto = getattr(ws, "_proto", None)
    try:
        decoder = proto._frame_decoder  # type: ignore[union-attr]
        return decoder.header is None and len(decoder.buffer) == 0 and proto._message_decoder.opcode is None  # type: ignore[union-attr]
    except AttributeError:
        return False


class DirectReader(asyncio.Protocol):
    """Reads a bridged plain-TCP client for its layer; end of stream and flow control still go to
    mitmproxy's own protocol, so the connection ends and drains exactly as before."""

    def __init__(self, layer_: CodexWebsocketLayer, inner: asyncio.StreamReaderProtocol, channel: MitmChannel,
                 deliver: Any) -> None:
        self.layer = layer_
        self.inner = inner
        self.channel = channel
        self.deliver = deliver  # the layer's handler for this connection's bytes

    def data_received(self, data: bytes) -> None:
        try:
            self.deliver(data, self.channel)
        except Exception:
            log.exception("stage=bridge_error client=%s; closing the connection", self.layer.context.client.peername)
            self.channel.close(1011, "codexbridge internal error")

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class MitmChannel:
    """Sends to a client: straight to its socket when nothing sits between (plain TCP), else through
    the layers (TLS); in both cases in order and with the layer's bookkeeping."""

    HIGH_WATER = 256 * 1024  # bytes buffered toward a client before its upstream reads pause

    def __init__(self, flow: http.HTTPFlow) -> None:
        self.flow = flow
        proxyserver: Any = ctx.master.addons.get("proxyserver")
        self._handler = proxyserver.connections.get(flow.client_conn.id)
        if self._handler is None:
            raise ValueError("flow is not from a live connection")
        self.keepalive: KeepaliveDriver | None = None
        self.layer: CodexWebsocketLayer | None = None  # set when the flow's layer starts
        # Over TLS the layers must encrypt; on a plain connection no layer changes client-bound bytes.
        self._direct = not flow.client_conn.tls
        self._loop = asyncio.get_running_loop()

    @property
    def direct(self) -> bool:
        return self._direct

    def connection_io(self, connection: Any = None) -> Any:
        handler = self._handler
        return handler.transports.get(connection if connection is not None else handler.client)

    def activity(self) -> None:
        self._handler.timeout_watchdog.register_activity()

    def write_raw(self, data: bytes, connection: Any = None) -> None:
        writer = self._writer(connection)
        if writer is not None:
            writer.write(data)

    def inject_now(self, event: events.Event) -> None:
        self._loop.create_task(self.inject(event))

    def _writer(self, connection: Any = None) -> asyncio.StreamWriter | None:
        handler = self._handler
        io = handler.transports.get(connection if connection is not None else handler.client)
        writer = io.writer if io is not None else None
        if writer is None or writer.is_closing():
            return None
        return writer

    def write(self, frames: list[bytes], synthetic: bool = False) -> bool:
        layer = self.layer
        if layer is None or layer.client_gone:
            return False
        if not self._direct:
            if self._writer() is None:
                return False
            self._loop.create_task(self.inject(BridgeInjected(self.flow, placeholder_message(), frames=frames, synthetic=synthetic)))
            return True
        writer = self._writer()
        if writer is None:
            return False
        data = layer.outgoing(frames, synthetic)
        if data is None:
            return False
        self._handler.timeout_watchdog.register_activity()
        writer.write(data)
        return True

    def congested(self) -> bool:
        writer = self._writer()
        return writer is not None and writer.transport.get_write_buffer_size() > self.HIGH_WATER

    async def drained(self) -> bool:
        writer = self._writer()
        if writer is None:
            return False
        try:
            await writer.drain()
        except (OSError, RuntimeError):
            return False
        return not writer.is_closing()

    def response_state(self, in_flight: bool) -> None:
        layer_keepalive = self.keepalive
        if layer_keepalive is not None:
            if in_flight:
                layer_keepalive.response_started()
            else:
                layer_keepalive.response_ended()

    def close(self, code: int, reason: str) -> None:
        self._loop.create_task(self.inject(BridgeInjected(self.flow, placeholder_message(), close=(code, reason))))

    async def inject(self, event: events.Event) -> bool:
        writer = self._writer()
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
