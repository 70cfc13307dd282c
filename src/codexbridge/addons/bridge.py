"""The mitmproxy addon: options, and hooks mapped onto the bridge core."""

from __future__ import annotations

import gc
import logging
import os
import re
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions, http
from mitmproxy.websocket import WebSocketData

from codexbridge import mitm
from codexbridge.bridge.session import BridgeSession, SessionConfig
from codexbridge.bridge.upstream import UpstreamPool, UpstreamSettings
from codexbridge.recording.pipe import RecordingSink, RemoteRecorder
from codexbridge.recording.schema import HttpMessage, Redactor
from codexbridge.responses.events import dumps
from codexbridge.responses.keepalive import KeepalivePolicy
from codexbridge.wire.wsframes import accept_token

log = logging.getLogger("codexbridge")
GC_YOUNG_THRESHOLD = 10_000

MODES = ("bridge", "passthrough", "auto", "reject", "off")
REFUSALS = (404, 405, 426)
ON_DISCONNECT = ("cancel", "drain")


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
        self._log_level_set = False
        self.sessions: set[BridgeSession] = set()
        self.ws_support: dict[str, tuple[bool, float]] = {}  # auto mode: upstream -> (speaks WS, until)
        self.sink = RecordingSink()
        self.http_recorders: dict[str, RemoteRecorder] = {}

    def load(self, loader) -> None:
        loader.add_option(
            "codexbridge_mode", str, "bridge",
            "What to do with a WebSocket upgrade on the bridged path. 'bridge' answers it at the proxy "
            "and turns each response.create into a streaming POST to the upstream; 'passthrough' relays "
            "it to an upstream that speaks the WebSocket mode itself, adding the downstream keepalive; "
            "'auto' tries the upstream's upgrade first and bridges when the upstream refuses it "
            "(404/405/426), remembering the answer per upstream for codexbridge_auto_ttl seconds; "
            "'reject' answers 426 at once, so Codex falls back to HTTP after a single attempt; 'off' "
            "leaves all traffic alone.",
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
            "codexbridge_ping_interval", int, 20,
            "Seconds without any write to a WebSocket client after which the proxy sends it a Ping, "
            "starting after the first frame sent to it; 0 disables pings. Keeps idle-sensitive proxies "
            "(nginx proxy_read_timeout, CDNs) from closing a long silent turn.",
        )
        loader.add_option(
            "codexbridge_ping_timeout", int, 5,
            "Seconds to wait for the Pong answering our Ping; without it the client is closed with 1011 "
            "and the upstream is handled per codexbridge_on_disconnect. Must be below codexbridge_ping_interval.",
        )
        loader.add_option(
            "codexbridge_text_keepalive", int, 0,
            "Seconds of upstream silence during a response after which the proxy sends the client the text "
            "frame {\"type\":\"keepalive\"}, which Codex ignores but counts as activity for its own idle "
            "timeout (a Ping does not reset that timer); 0 disables it.",
        )
        loader.add_option(
            "codexbridge_auto_ttl", int, 3600,
            "In auto mode, seconds to remember whether an upstream accepted or refused the WebSocket upgrade.",
        )
        loader.add_option(
            "codexbridge_record", str, "",
            "A directory to record every session on the bridged path into, one JSON Lines file per "
            "WebSocket session (bridge and passthrough) or HTTP+SSE exchange; empty disables recording. "
            "Secrets are redacted before anything is written; files are created with mode 0600.",
        )
        loader.add_option(
            "codexbridge_record_redact", Sequence[str], [],
            "Extra regular expressions whose matches are replaced by <redacted> in recordings, on top of "
            "the built-in ones (Authorization, Cookie and API-key headers; sk-..., bearer tokens, JWTs).",
        )
        loader.add_option(
            "codexbridge_record_elide", int, 0,
            "In recordings, replace every JSON string longer than this many characters by a marker with "
            "its length and SHA-256 (replay stays exact on such files); 0 keeps everything.",
        )
        loader.add_option(
            "codexbridge_max_stored_bytes", int, 64 * 1024 * 1024,
            "Approximate bytes of conversation history kept per connection for previous_response_id "
            "continuations and forks; the least recently used response is forgotten first. 0 means no byte bound.",
        )
        loader.add_option(
            "codexbridge_max_lanes", int, 32,
            "Distinct named stream_id lanes one connection may use; one more gets the "
            "websocket_stream_limit_reached error event.",
        )
        loader.add_option(
            "codexbridge_max_active", int, 16,
            "Responses one connection may stream at once across its lanes; further creates wait their turn.",
        )
        loader.add_option(
            "codexbridge_max_queued", int, 64,
            "Creates one connection may have waiting for their lane or an active slot; one more gets a 429 "
            "too_many_queued_responses error event.",
        )
        loader.add_option(
            "codexbridge_gc_tuning", bool, True,
            "At startup, move every object that exists then out of the garbage collector's scans (gc.freeze) "
            f"and collect young objects every {GC_YOUNG_THRESHOLD:,} allocations instead of Python's 700: "
            "streams allocate many short-lived objects, and full scans of the startup heap were the largest "
            "source of throughput jitter in codexbridge bench.",
        )
        loader.add_option(
            "codexbridge_message_hook", bool, False,
            "Run mitmproxy's websocket_message hook for each message of a Codex WebSocket session (client "
            "frames of a bridged session, before they are bridged; both directions in passthrough), so that "
            "other addons can see, change or drop them. Off by default: the hook is a pass over every loaded "
            "addon per message; messages are still kept in the flow for mitmweb and -w files.",
        )
        loader.add_option(
            "codexbridge_stream_sse", bool, True,
            "Stream every text/event-stream response through as it arrives instead of buffering the whole "
            "body (mitmproxy's default), so Codex in HTTP mode sees events live.",
        )
        mitm.install()

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "termlog_verbosity" in updated or not self._log_level_set:
            # mitmproxy's root logger takes everything and hands each record to every addon (add_log):
            # a debug line nobody shows would cost more than the event it describes.
            self._log_level_set = True
            verbosity = str(getattr(opts, "termlog_verbosity", "info") or "info").upper()
            log.setLevel(logging.DEBUG if verbosity == "DEBUG" else logging.INFO)
        if "codexbridge_path" in updated and not opts.codexbridge_path.startswith("/"):
            raise exceptions.OptionsError("codexbridge_path must start with '/', e.g. /v1/responses.")
        if {"codexbridge_ping_interval", "codexbridge_ping_timeout"} & updated:
            interval, timeout = opts.codexbridge_ping_interval, opts.codexbridge_ping_timeout
            if interval < 0 or timeout < 1:
                raise exceptions.OptionsError("codexbridge_ping_interval must be >= 0 and codexbridge_ping_timeout >= 1.")
            if interval and timeout >= interval:
                raise exceptions.OptionsError(
                    f"codexbridge_ping_timeout ({timeout}) must be below codexbridge_ping_interval ({interval})."
                )
        if "codexbridge_text_keepalive" in updated and opts.codexbridge_text_keepalive < 0:
            raise exceptions.OptionsError("codexbridge_text_keepalive must be 0 (off) or positive.")
        for name in ("codexbridge_connect_timeout", "codexbridge_read_timeout", "codexbridge_max_stored_responses",
                     "codexbridge_auto_ttl", "codexbridge_max_lanes", "codexbridge_max_active", "codexbridge_max_queued"):
            if name in updated and getattr(opts, name) < 1:
                raise exceptions.OptionsError(f"{name} must be at least 1.")
        if "codexbridge_max_frame_bytes" in updated and opts.codexbridge_max_frame_bytes < 0:
            raise exceptions.OptionsError("codexbridge_max_frame_bytes must be 0 (no limit) or positive.")
        if "codexbridge_record" in updated and opts.codexbridge_record:
            try:
                os.makedirs(opts.codexbridge_record, mode=0o700, exist_ok=True)
            except OSError as e:
                raise exceptions.OptionsError(f"codexbridge_record: cannot create {opts.codexbridge_record}: {e}") from e
            if not os.access(opts.codexbridge_record, os.W_OK | os.X_OK):
                raise exceptions.OptionsError(f"codexbridge_record: {opts.codexbridge_record} is not writable.")
        if "codexbridge_record_redact" in updated:
            for pattern in opts.codexbridge_record_redact:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise exceptions.OptionsError(f"codexbridge_record_redact: bad pattern {pattern!r}: {e}") from e
            Redactor(opts.codexbridge_record_redact)  # the patterns must also combine
        if "codexbridge_max_stored_bytes" in updated and opts.codexbridge_max_stored_bytes < 0:
            raise exceptions.OptionsError("codexbridge_max_stored_bytes must be 0 (no bound) or positive.")
        if "codexbridge_record_elide" in updated and opts.codexbridge_record_elide < 0:
            raise exceptions.OptionsError("codexbridge_record_elide must be 0 (off) or positive.")
        if "codexbridge_mode" in updated and opts.codexbridge_mode != "off" and not opts.websocket:
            raise exceptions.OptionsError("codexbridge needs mitmproxy's 'websocket' option to be on.")

    def running(self) -> None:
        if ctx.options.connection_strategy == "eager" and ctx.options.codexbridge_mode != "off":
            log.info(
                "connection_strategy=eager opens an unused upstream connection per client; "
                "--set connection_strategy=lazy avoids it."
            )
        if ctx.options.codexbridge_gc_tuning and ctx.options.codexbridge_mode != "off":
            gc.collect()
            gc.freeze()
            young, middle, old = gc.get_threshold()
            gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)

    def _settings(self, flow: http.HTTPFlow) -> UpstreamSettings:
        opts = ctx.options
        mode = flow.client_conn.proxy_mode
        return UpstreamSettings(
            ssl_insecure=opts.ssl_insecure,
            trusted_ca=opts.ssl_verify_upstream_trusted_ca or None,
            trusted_confdir=opts.ssl_verify_upstream_trusted_confdir or None,
            proxy=mode.data if mode.type_name == "upstream" else None,
            proxy_auth=(opts.upstream_auth or None) if mode.type_name == "upstream" else None,
            connect_timeout=float(opts.codexbridge_connect_timeout),
            read_timeout=float(opts.codexbridge_read_timeout),
        )

    @staticmethod
    def upstream_url(flow: http.HTTPFlow) -> str:
        """Where the POST goes: the reverse target, or the host the client asked for."""
        if flow.client_conn.proxy_mode.type_name == "reverse":
            return flow.request.url
        return flow.request.pretty_url

    def recorder(self, flow: http.HTTPFlow, mode: str, upstream: str) -> RemoteRecorder | None:
        directory = ctx.options.codexbridge_record
        if not directory:
            return None
        req = flow.request
        return self.sink.session(
            directory, mode, upstream,
            HttpMessage(method=req.method, url=req.pretty_url, headers=list(req.headers.items(multi=True))),
            list(ctx.options.codexbridge_record_redact), ctx.options.codexbridge_record_elide, label=flow.id[:8],
        )

    @staticmethod
    def keepalive_policy() -> KeepalivePolicy:
        opts = ctx.options
        return KeepalivePolicy(
            float(opts.codexbridge_ping_interval), float(opts.codexbridge_ping_timeout), float(opts.codexbridge_text_keepalive)
        )

    def request(self, flow: http.HTTPFlow) -> None:
        opts = ctx.options
        mode = opts.codexbridge_mode
        if mode == "off" or flow.response is not None:
            return
        if not is_websocket_upgrade(flow.request):
            if opts.codexbridge_record:
                self.record_http_request(flow)
            return
        if urlsplit(flow.request.path).path.rstrip("/") != opts.codexbridge_path.rstrip("/"):
            return
        if mode == "reject":
            flow.response = http.Response.make(
                426,
                dumps({"error": {"type": "invalid_request_error", "code": "websocket_not_supported",
                                 "message": "This endpoint does not serve WebSockets; use HTTP POST with SSE."}}),
                {"Content-Type": "application/json"},
            )
            flow.metadata["codexbridge"] = {"mode": "reject"}
            return
        if mode == "auto":
            known = self.ws_support.get(self.upstream_key(flow))
            if known is not None and known[1] > time.monotonic():
                mode = "passthrough" if known[0] else "bridge"
            else:
                flow.metadata["codexbridge"] = {"mode": "auto"}
                mode = "passthrough"
        if mode == "passthrough":
            mitm.plan_flow(flow, mitm.FlowPlan(keepalive=self.keepalive_policy(),
                                               drain=opts.codexbridge_on_disconnect == "drain",
                                               message_hook=opts.codexbridge_message_hook,
                                               recorder=self.recorder(flow, "passthrough", flow.request.pretty_url)))
            flow.metadata.setdefault("codexbridge", {"mode": "passthrough"})
            return
        self.bridge(flow)

    @staticmethod
    def upstream_key(flow: http.HTTPFlow) -> str:
        r = flow.request
        return f"{r.scheme}://{r.pretty_host}:{r.port}"

    def bridge(self, flow: http.HTTPFlow) -> None:
        """Answers the upgrade with a synthetic 101 and attaches a bridge session to the flow."""
        opts = ctx.options
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
            max_stored_bytes=opts.codexbridge_max_stored_bytes,
            max_frame_bytes=opts.codexbridge_max_frame_bytes,
            max_lanes=opts.codexbridge_max_lanes,
            max_active=opts.codexbridge_max_active,
            max_queued=opts.codexbridge_max_queued,
        )
        try:
            channel = mitm.MitmChannel(flow)
        except ValueError:
            return
        session = BridgeSession(config, list(flow.request.headers.items(multi=True)), channel, self.pool)
        self.sessions.add(session)
        session.closed_callback = self.sessions.discard
        session.recorder = self.recorder(flow, "bridge", upstream)
        mitm.plan_flow(flow, mitm.FlowPlan(hooks=session, keepalive=self.keepalive_policy(), channel=channel,
                                           recorder=session.recorder, message_hook=opts.codexbridge_message_hook))
        flow.metadata["codexbridge"] = {"mode": "bridge", "upstream": upstream}
        flow.response = http.Response.make(
            101,
            b"",
            {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept_token(key)},
        )

    def response(self, flow: http.HTTPFlow) -> None:
        rec = self.http_recorders.pop(flow.id, None)
        if rec is not None:
            if flow.response is not None and not flow.response.stream and flow.response.raw_content:
                rec.upstream_chunk(flow.response.raw_content)
            rec.upstream_end()
            rec.complete()
        meta = flow.metadata.get("codexbridge")
        if not meta or meta.get("mode") not in ("auto", "passthrough") or flow.response is None:
            return
        status = flow.response.status_code
        if meta["mode"] == "auto":
            accepted = status == 101
            if accepted or status in REFUSALS:
                until = time.monotonic() + ctx.options.codexbridge_auto_ttl
                self.ws_support[self.upstream_key(flow)] = (accepted, until)
                log.info("stage=auto_probe upstream=%s websocket=%s status=%d", self.upstream_key(flow),
                         "yes" if accepted else "no", status)
            if status in REFUSALS:
                plan = mitm.forget_flow(flow)
                if plan is not None and plan.recorder is not None:
                    plan.recorder.discard()
                refusal, flow.response = flow.response, None
                self.bridge(flow)
                if flow.response is None:
                    flow.response = refusal
                if flow.response is not None and flow.response.status_code == 101:
                    flow.websocket = WebSocketData()  # mitmproxy decided before this hook that it was not one
                    mitm.detach_server(flow)
                return
        if status != 101:
            plan = mitm.forget_flow(flow)
            if plan is not None and plan.recorder is not None:
                plan.recorder.error("upstream", f"the upstream answered the upgrade with {status}")
                plan.recorder.complete()

    def error(self, flow: http.HTTPFlow) -> None:
        plan = mitm.forget_flow(flow)
        rec = self.http_recorders.pop(flow.id, None) or (plan.recorder if plan is not None else None)
        if rec is not None:
            rec.error("proxy", flow.error.msg if flow.error else "flow error")
            rec.complete()

    # -- plain HTTP + SSE on the bridged path (Codex in HTTP mode) ----------------------------

    def record_http_request(self, flow: http.HTTPFlow) -> None:
        if flow.request.method != "POST":
            return
        if urlsplit(flow.request.path).path.rstrip("/") != ctx.options.codexbridge_path.rstrip("/"):
            return
        rec = self.recorder(flow, "http", self.upstream_url(flow))
        if rec is None:
            return
        req = flow.request
        rec.upstream_request(req.method, self.upstream_url(flow), req.headers.items(multi=True), req.raw_content or b"")
        self.http_recorders[flow.id] = rec

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None:
            return
        rec = self.http_recorders.get(flow.id)
        if rec is not None:
            rec.upstream_response(response.status_code, response.headers.items(multi=True))
        if (
            ctx.options.codexbridge_stream_sse
            and not response.stream
            and response.headers.get("content-type", "").lower().startswith("text/event-stream")
        ):
            if rec is None:
                response.stream = True
            else:
                def record(chunk: bytes, rec: RemoteRecorder = rec) -> bytes:
                    if chunk:
                        rec.upstream_chunk(chunk)
                    return chunk

                response.stream = record

    async def done(self) -> None:
        mitm.uninstall()
        await self.pool.aclose()
        self.sink.close()
