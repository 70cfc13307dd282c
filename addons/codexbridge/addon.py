"""The mitmproxy addon: options, and hooks mapped onto the bridge core."""

from __future__ import annotations

import base64
import hashlib
import logging
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions, http

from . import mitm
from .frames import dumps
from .session import BridgeSession, SessionConfig
from .upstream import UpstreamPool, UpstreamSettings

log = logging.getLogger("codexbridge")

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MODES = ("bridge", "reject", "off")
ON_DISCONNECT = ("cancel", "drain")


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def is_websocket_upgrade(request: http.Request) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("connection", "").lower()
    )


class CodexBridge:
    """Answers the Responses WebSocket upgrade at the proxy and bridges it to POST + SSE."""

    def __init__(self) -> None:
        self.pool = UpstreamPool()
        self.sessions: set[BridgeSession] = set()

    def load(self, loader) -> None:
        loader.add_option(
            "codexbridge_mode", str, "bridge",
            "What to do with a WebSocket upgrade on the bridged path. 'bridge' answers it at the proxy "
            "and turns each response.create into a streaming POST to the upstream; 'reject' answers 426 "
            "at once, so Codex falls back to HTTP after a single attempt; 'off' leaves all traffic alone.",
            choices=MODES,
        )
        loader.add_option(
            "codexbridge_path", str, "/v1/responses",
            "The request path whose WebSocket upgrade is bridged (Codex uses its base_url plus '/responses'). "
            "Any other path passes through untouched.",
        )
        loader.add_option(
            "codexbridge_on_disconnect", str, "cancel",
            "What happens to an upstream response in flight when its client disconnects: 'cancel' closes "
            "the upstream request at once; 'drain' reads it to the end (for usage accounting and recording).",
            choices=ON_DISCONNECT,
        )
        loader.add_option(
            "codexbridge_max_frame_bytes", int, 32 * 1024 * 1024,
            "The largest client frame accepted, in bytes; a larger one is answered with a 400 error frame "
            "and the connection stays usable. 0 means no limit.",
        )
        loader.add_option(
            "codexbridge_connect_timeout", int, 10,
            "Seconds to wait for the upstream connection and its TLS handshake before answering a 502 error frame.",
        )
        loader.add_option(
            "codexbridge_read_timeout", int, 300,
            "Seconds the upstream may stay silent (before its response headers or between two reads of "
            "the event stream) before the bridge gives up with a 504 error frame.",
        )
        loader.add_option(
            "codexbridge_max_stored_responses", int, 8,
            "How many completed responses per connection can be continued with previous_response_id; "
            "the oldest is forgotten first, and continuing it yields previous_response_not_found.",
        )
        loader.add_option(
            "codexbridge_stream_sse", bool, True,
            "Stream every text/event-stream response through as it arrives instead of buffering the whole "
            "body (mitmproxy's default), so Codex in HTTP mode sees events live.",
        )
        mitm.install()

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "codexbridge_path" in updated and not opts.codexbridge_path.startswith("/"):
            raise exceptions.OptionsError("codexbridge_path must start with '/', e.g. /v1/responses.")
        for name in ("codexbridge_connect_timeout", "codexbridge_read_timeout", "codexbridge_max_stored_responses"):
            if name in updated and getattr(opts, name) < 1:
                raise exceptions.OptionsError(f"{name} must be at least 1.")
        if "codexbridge_max_frame_bytes" in updated and opts.codexbridge_max_frame_bytes < 0:
            raise exceptions.OptionsError("codexbridge_max_frame_bytes must be 0 (no limit) or positive.")
        if "codexbridge_mode" in updated and opts.codexbridge_mode != "off" and not opts.websocket:
            raise exceptions.OptionsError("codexbridge needs mitmproxy's 'websocket' option to be on.")

    def running(self) -> None:
        if ctx.options.connection_strategy == "eager" and ctx.options.codexbridge_mode != "off":
            log.info(
                "connection_strategy=eager opens an unused upstream connection per client; "
                "--set connection_strategy=lazy avoids it."
            )

    def _settings(self, flow: http.HTTPFlow) -> UpstreamSettings:
        opts = ctx.options
        mode = flow.client_conn.proxy_mode
        return UpstreamSettings(
            ssl_insecure=opts.ssl_insecure,
            trusted_ca=opts.ssl_verify_upstream_trusted_ca or None,
            trusted_confdir=opts.ssl_verify_upstream_trusted_confdir or None,
            proxy=mode.data if mode.type_name == "upstream" else None,
            connect_timeout=float(opts.codexbridge_connect_timeout),
            read_timeout=float(opts.codexbridge_read_timeout),
        )

    @staticmethod
    def upstream_url(flow: http.HTTPFlow) -> str:
        """Where the POST goes: the reverse target, or the host the client asked for."""
        if flow.client_conn.proxy_mode.type_name == "reverse":
            return flow.request.url
        return flow.request.pretty_url

    def request(self, flow: http.HTTPFlow) -> None:
        opts = ctx.options
        if opts.codexbridge_mode == "off" or flow.response is not None:
            return
        if not is_websocket_upgrade(flow.request):
            return
        if urlsplit(flow.request.path).path.rstrip("/") != opts.codexbridge_path.rstrip("/"):
            return
        if opts.codexbridge_mode == "reject":
            flow.response = http.Response.make(
                426,
                dumps({"error": {"type": "invalid_request_error", "code": "websocket_not_supported",
                                 "message": "This endpoint does not serve WebSockets; use HTTP POST with SSE."}}),
                {"Content-Type": "application/json"},
            )
            flow.metadata["codexbridge"] = {"mode": "reject"}
            return
        key = flow.request.headers.get("sec-websocket-key", "")
        if flow.request.headers.get("sec-websocket-version", "") != "13" or not key:
            flow.response = http.Response.make(
                426 if key else 400, b"WebSocket version 13 with a Sec-WebSocket-Key is required.\n",
                {"Sec-WebSocket-Version": "13", "Content-Type": "text/plain"},
            )
            return
        upstream = self.upstream_url(flow)
        config = SessionConfig(
            upstream_url=upstream,
            settings=self._settings(flow),
            on_disconnect=opts.codexbridge_on_disconnect,
            max_responses=opts.codexbridge_max_stored_responses,
            max_frame_bytes=opts.codexbridge_max_frame_bytes,
        )
        try:
            channel = mitm.MitmChannel(flow)
        except ValueError:
            return
        session = BridgeSession(config, list(flow.request.headers.items(multi=True)), channel, self.pool)
        self.sessions.add(session)
        session.closed_callback = self.sessions.discard
        mitm.bridge_flow(flow, session)
        flow.metadata["codexbridge"] = {"mode": "bridge", "upstream": upstream}
        flow.response = http.Response.make(
            101,
            b"",
            {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept_key(key)},
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if (
            ctx.options.codexbridge_stream_sse
            and response is not None
            and not response.stream
            and response.headers.get("content-type", "").lower().startswith("text/event-stream")
        ):
            response.stream = True

    async def done(self) -> None:
        mitm.uninstall()
        await self.pool.aclose()
