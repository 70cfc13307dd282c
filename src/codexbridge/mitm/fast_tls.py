"""The fast path over TLS: the listener does a client's TLS handshake itself, with mitmproxy's TLS hooks (tlsconfig
and other addons still make the connection), serves a bridged upgrade as over plain TCP, and gives any other request
back to mitmproxy's own layers, TLS and all.

Why: mitmproxy's TLS and HTTP layers, two next-layer passes and a task per hook cost ~4 ms of Python per upgrade on
top of OpenSSL's ~1.5 ms, on the loop that relays every other session (a TLS upgrade took 7.2 ms of proxy CPU, a
plain one 2.4 ms). The hooks run as mitmproxy runs them for this mode (client_connected, tls_clienthello,
tls_start_client, then tls_established_client or tls_failed_client, then the request's), but for the two next_layer
passes: their outcome for a reverse-mode listener is fixed, and the fast path is only taken while mitmproxy's own
addons alone implement next_layer and tls_clienthello.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mitmproxy import certs, connection, ctx
from mitmproxy import tls as mitmproxy_tls
from mitmproxy.proxy import commands, events, layer, mode_specs, tunnel
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers import tls as tls_layers
from mitmproxy.proxy.utils import expect
from mitmproxy.utils import human
from OpenSSL import SSL

from codexbridge.mitm import dispatch, fastpath
from codexbridge.mitm.tls import encrypt

log = logging.getLogger("codexbridge.mitm")
clients: dict[str, SSL.Connection] = {}  # a client's id -> the TLS connection its FastTLSConnection made


def _stock_only(hook: str) -> bool:
    """Whether mitmproxy's own addons alone implement a hook (then the fast path knows what they decide)."""
    return all(type(getattr(func, "__self__", None)).__module__.startswith("mitmproxy.")
               for group in dispatch.handlers(ctx.master.addons, hook) for func in group)


async def take(handler: fastpath.Handler, mode: mode_specs.ReverseMode,
               reader: asyncio.StreamReader) -> FastTLSConnection | None:
    """A FastTLSConnection for a TLS client whose ClientHello came whole (it is then consumed); None, with nothing
    consumed, when mitmproxy's own TLS layer must serve it."""
    if mode.scheme == "https" and ctx.options.connection_strategy == "eager":
        return None  # tlsconfig then has the upstream's TLS established first, to copy its certificate
    if not (_stock_only("next_layer") and _stock_only("tls_clienthello")):
        return None
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]  # asyncio's buffer, read in place (checked at load)
    try:
        async with asyncio.timeout(fastpath.HEAD_WAIT):
            while True:
                try:
                    hello = tls_layers.parse_client_hello(bytes(buffer))
                except ValueError:
                    return None  # mitmproxy's layer says why
                if hello is not None:
                    break
                if len(buffer) > fastpath.HEAD_LIMIT or reader.at_eof():
                    return None
                await fastpath.wait_for_bytes(reader)
    except (TimeoutError, RuntimeError, OSError):
        return None
    received = await reader.readexactly(len(buffer))  # at once: the bytes are in the buffer
    return FastTLSConnection(handler, mode, hello, received)


fastpath.taking.tls = take


class FastTLSConnection(fastpath.FastConnection):
    """A FastConnection that terminates the client's TLS: the handshake over memory BIOs, the records encrypted and
    decrypted here (the outbox encrypts with the same connection), and, when the decrypted request is not a
    bridged upgrade, the connection given back to mitmproxy with its TLS layer past the handshake."""

    def __init__(self, handler: fastpath.Handler, mode: mode_specs.ReverseMode, hello: mitmproxy_tls.ClientHello,
                 received: bytes) -> None:
        super().__init__(handler, mode, None)
        self.hello = hello
        self.received = received  # the bytes read before the handshake began (the ClientHello, maybe more)
        self.tls: SSL.Connection = None  # type: ignore[assignment]  # (made by the tls_start_client hook)
        self.plaintext = bytearray()  # decrypted, not yet handed on
        self.client_closed = False  # the client's close_notify came

    async def _begin(self) -> bool | None:
        if not await self._handshake():
            return False
        head = await self._request_head()
        decide = fastpath.taking.decide
        flow_ = fastpath.bridged_flow(self.handler, self.mode, head, decide) if head and decide else None
        if flow_ is None:
            await self._give_back()
            return None
        del self.plaintext[:len(head)]  # type: ignore[arg-type]  # (head is bytes here)
        self.flow = flow_
        fastpath.taking.taken += 1
        log.debug("stage=fast_path client=%s: a bridged upgrade over TLS, served by codexbridge's listener",
                  self.client.peername)
        return True

    async def _handshake(self) -> bool:
        """mitmproxy's ClientTLSLayer, for one connection: True once the handshake is done."""
        client = self.client
        client.tls = True
        client.sni = self.hello.sni
        client.alpn_offers = self.hello.alpn_protocols
        hello = mitmproxy_tls.ClientHelloData(self.context, self.hello)
        self.hello = None  # type: ignore[assignment]  # (its parse tree is not kept for the connection's life)
        await self._hook(tls_layers.TlsClienthelloHook(hello))
        if hello.ignore_connection or hello.establish_server_tls_first:  # (take() saw that no other addon decides)
            log.error("stage=bridge_error client=%s: an addon changed tls_clienthello's decision after the fast path "
                      "took the connection; closing it", client.peername)
            self._close()
            return False
        start = mitmproxy_tls.TlsData(client, self.context, is_dtls=False)
        await self._hook(tls_layers.TlsStartClientHook(start))
        if start.ssl_conn is None:
            fastpath.mitmproxy_log.error("No TLS context was provided, failing connection.",
                                         extra={"client": client.peername})
            self._close()
            return False
        tls = self.tls = start.ssl_conn
        data, self.received = self.received, b""
        while True:
            if data:
                tls.bio_write(data)
            try:
                tls.do_handshake()
                break
            except SSL.WantReadError:
                self._flush()
            except SSL.Error as e:
                self._flush()  # the alert
                return await self._handshake_failed(f"OpenSSL {e!r}")
            data = await self._read_some()
            if not data:
                return await self._handshake_failed("connection closed")
        client.certificate_list = []
        peer = tls.get_peer_certificate()
        for cert in ([peer] if peer is not None else []) + (tls.get_peer_cert_chain() or []):
            try:
                client.certificate_list.append(certs.Cert.from_pyopenssl(cert))
            except ValueError as e:
                fastpath.mitmproxy_log.warning(f"[tls] failed to parse certificate: {e}", extra={"client": client.peername})
        client.timestamp_tls_setup = time.time()
        client.alpn = tls.get_alpn_proto_negotiated()
        client.cipher = tls.get_cipher_name()
        client.tls_version = tls.get_protocol_version_name()  # type: ignore[assignment]  # (a TlsVersion name)
        await self._hook(tls_layers.TlsEstablishedClientHook(mitmproxy_tls.TlsData(client, self.context, tls)))
        clients[client.id] = tls
        self._decrypt(b"", flush=False)  # what came with the client's Finished (the session tickets the handshake
        # left in the BIO go out with the 101, in one write)
        return True

    async def _handshake_failed(self, err: str) -> bool:
        """As mitmproxy's ClientTLSLayer reports a failed handshake: its log line, tls_failed_client, the close."""
        client = self.client
        dest = client.sni or human.format_address(self.context.server.address)
        level = logging.WARNING
        if "unsupported protocol" in err:
            err = ("Client and mitmproxy cannot agree on a TLS version to use. "
                   "You may need to adjust mitmproxy's tls_version_client_min option.")
        elif "unknown ca" in err or "bad certificate" in err or "certificate unknown" in err:
            err = f"The client does not trust the proxy's certificate for {dest} ({err})"
        elif err == "connection closed":
            err = (f"The client disconnected during the handshake. If this happens consistently for {dest}, "
                   f"this may indicate that the client does not trust the proxy's certificate.")
            level = logging.INFO
        else:
            err = f"The client may not trust the proxy's certificate for {dest} ({err})"
        fastpath.mitmproxy_log.log(level, f"Client TLS handshake failed. {err}", extra={"client": client.peername})
        client.error = err
        await self._hook(tls_layers.TlsFailedClientHook(mitmproxy_tls.TlsData(client, self.context, self.tls)))
        self._close()
        return False

    async def _read_some(self) -> bytes:
        """The client's next bytes: read from the socket at once when they are there already (the request usually
        follows the client's Finished at once), so that the upgrade does not wait two more loop turns for them."""
        reader = self.reader
        try:
            if not reader._buffer and not fastpath.read_now(reader):  # type: ignore[attr-defined]  # (checked at load)
                await fastpath.wait_for_bytes(reader)
            return await reader.read(65535)
        except OSError:
            return b""

    async def _request_head(self) -> bytes | None:
        """The decrypted request head, when it is a GET that comes whole within HEAD_LIMIT bytes and HEAD_WAIT
        seconds; None as soon as it cannot be a bridged upgrade."""
        plaintext = self.plaintext
        try:
            async with asyncio.timeout(fastpath.HEAD_WAIT):
                while True:
                    if head := fastpath.whole_head(plaintext):
                        return head
                    if not fastpath.may_become_head(plaintext) or self.client_closed:
                        return None
                    data = await self._read_some()
                    if not data:
                        return None
                    self._decrypt(data, flush=False)
        except TimeoutError:
            return None

    def _decrypt(self, data: bytes, flush: bool = True) -> None:
        """Adds what `data` decrypts to to self.plaintext (mitmproxy's TLSLayer.receive_data, then what the TLS
        connection has for the client written unless `flush` is False); a close_notify sets self.client_closed."""
        tls = self.tls
        if data:
            tls.bio_write(data)
        while True:
            try:
                self.plaintext += tls.recv(65535)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.client_closed = True
                break
            except SSL.Error as e:
                fastpath.mitmproxy_log.warning(f"TLS Error: {e}", extra={"client": self.client.peername})
                break
        if flush:
            self._flush()

    def _flush(self) -> None:
        """Writes what the TLS connection has for the client (handshake flights, alerts, tickets)."""
        try:
            records = encrypt(self.tls, b"")
        except SSL.Error:
            return
        if records and not self.writer.is_closing():
            self.writer.write(records)

    def _send(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        try:
            records = encrypt(self.tls, data)
        except SSL.Error as e:
            fastpath.mitmproxy_log.warning(f"TLS Error: {e}", extra={"client": self.client.peername})
            self._close()
            return
        if records:
            self.writer.write(records)

    async def _answer(self) -> bool:
        if not await super()._answer():
            return False
        if self.plaintext:  # frames the client sent right behind its request
            data = bytes(self.plaintext)
            self.plaintext.clear()
            await self.server_event(events.DataReceived(self.client, data))
        return True

    async def _received(self, data: bytes) -> bool:
        self._decrypt(data)
        if self.plaintext:
            plaintext = bytes(self.plaintext)
            self.plaintext.clear()
            await self.server_event(events.DataReceived(self.client, plaintext))
        return not self.client_closed

    async def _end(self, shown: bool, peer: dict[str, Any]) -> None:
        clients.pop(self.client.id, None)
        await super()._end(shown, peer)

    async def _give_back(self) -> None:
        """From here on mitmproxy's handler serves the connection, with the layers its next_layer addon would have
        put there (GivenBack), and what was decrypted so far; its reader starts at the next byte."""
        reader = self.reader
        if reader._buffer and not self.client_closed:  # type: ignore[attr-defined]  # (checked at load)
            self._decrypt(await reader.read(len(reader._buffer)), flush=False)  # type: ignore[attr-defined]
        self._flush()  # (what the TLS connection holds goes first: mitmproxy's layer writes only what comes next)
        clients.pop(self.client.id, None)
        self.context.layers = []
        self.handler.layer = GivenBack(self.context, self.tls, bytes(self.plaintext), self.client_closed)
        self.plaintext.clear()


class GivenBack(modes.ReverseProxy):
    """mitmproxy's reverse proxy layer for a connection whose TLS handshake the fast path did, with the layers
    mitmproxy's next_layer addon picks for a TLS client in this mode: a ServerTLSLayer for an https upstream,
    the client's TLS layer (here past its handshake), the HTTP layer."""

    def __init__(self, context: Any, tls: SSL.Connection, plaintext: bytes, client_closed: bool) -> None:
        super().__init__(context)
        self._tls = tls
        self._plaintext = plaintext
        self._client_closed = client_closed

    @expect(events.Start)
    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        context = self.context
        spec = context.client.proxy_mode
        assert isinstance(spec, mode_specs.ReverseMode)
        context.server.address = spec.address
        server_tls = None
        if spec.scheme == "https":
            if not context.options.keep_host_header:
                context.server.sni = spec.address[0]
            server_tls = tls_layers.ServerTLSLayer(context)
        client_tls = EstablishedClientTLS(context, self._tls, self._plaintext, self._client_closed)
        client_tls.child_layer = http_layers.HttpLayer(context, http_layers.HTTPMode.transparent)
        if server_tls is not None:
            server_tls.child_layer = client_tls
        self.child_layer = server_tls or client_tls
        err = yield from self.finish_start()
        if err:
            yield commands.CloseConnection(context.client)


class EstablishedClientTLS(tls_layers.ClientTLSLayer):
    """mitmproxy's ClientTLSLayer once its handshake is done: what was decrypted before it took over (and the
    client's close_notify, if that came too) goes to its child first, on a wakeup right after the start, when
    mitmproxy's handler reads the connection (a close during the start would find no reader to stop)."""

    def __init__(self, context: Any, tls: SSL.Connection, plaintext: bytes, client_closed: bool) -> None:
        # (not ClientTLSLayer.__init__: it would clear the client's TLS attributes, set by the handshake)
        tunnel.TunnelLayer.__init__(self, context, tunnel_connection=context.client, conn=context.client)
        self.tls = tls
        self.recv_buffer = bytearray()
        self.client_hello_parsed = True
        self.server_tls_available = isinstance(context.layers[-2], tls_layers.ServerTLSLayer)
        self.tunnel_state = tunnel.TunnelState.OPEN
        self._plaintext = plaintext
        self._client_closed = client_closed
        self._wakeup: commands.RequestWakeup | None = None

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield from self.event_to_child(event)
            if self._plaintext or self._client_closed:
                self._wakeup = commands.RequestWakeup(0)
                yield self._wakeup
        elif isinstance(event, events.Wakeup) and event.command is self._wakeup:
            yield from self._deliver()
        else:
            if self._wakeup is not None and isinstance(event, events.ConnectionEvent):
                yield from self._deliver()  # (the reader found the end of the stream before the wakeup came)
            yield from super()._handle_event(event)

    def _deliver(self) -> layer.CommandGenerator[None]:
        self._wakeup = None
        if self._plaintext:
            data, self._plaintext = self._plaintext, b""
            yield from self.event_to_child(events.DataReceived(self.conn, data))
        if self._client_closed:  # as TLSLayer.receive_data does on a close_notify
            self.conn.state &= ~connection.ConnectionState.CAN_READ
            yield from self.event_to_child(events.ConnectionClosed(self.conn))
