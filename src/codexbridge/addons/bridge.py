"""The bridge addon: answers Codex's Responses WebSocket upgrade at the proxy and bridges it to POST + SSE."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http
from mitmproxy.websocket import WebSocketData

from codexbridge import mitm
from codexbridge.addons.common import (
    BRIDGE,
    CodexAddon,
    add_message_hook_option,
    add_on_disconnect_option,
    handshake_fields,
    header,
    on_codex_path,
    registry,
    upgrade_fields,
    upstream_url,
)
from codexbridge.bridge.session import BridgeSession, SessionConfig
from codexbridge.bridge.upstream import UpstreamPool, UpstreamSettings
from codexbridge.responses.events import dumps
from codexbridge.responses.metadata import UPGRADE_ONLY_HEADERS, UpgradeMemory
from codexbridge.wire.wsframes import accept_token

log = logging.getLogger("codexbridge")
GC_YOUNG_THRESHOLD = 10_000
GC_AFTER_END = 1.0  # seconds from a session's end to the collection that frees it (later ends share it)
GC_SHARE = 0.05  # at most this share of the time goes to those collections
GC_LULL = 0.25  # seconds without a new upgrade that collection waits for (a connection storm is not paused by it)
GC_MAX_DELAY = 10.0  # seconds past its time that it waits for such a lull at most

MODES = ("bridge", "passthrough", "auto", "reject", "off")
REFUSALS = (404, 405, 426)
MAX_CONFIGS = 256  # session configurations remembered (one per upstream and proxy mode)


class CodexBridge(CodexAddon):
    """Answers the Responses WebSocket upgrade at the proxy and bridges it to POST + SSE (or relays it, per mode).
    Keepalive, recording and metrics of the sessions are the other addons' (addons/bridge.py loads them all)."""

    concern = BRIDGE

    def __init__(self) -> None:
        super().__init__()
        self.pool = UpstreamPool()
        self.sessions: set[BridgeSession] = set()
        self._gc_tuned = False
        self._gc_timer: asyncio.TimerHandle | None = None
        self._gc_last = 0.0  # when the last collection after a session's end ran (loop time), and its cost
        self._gc_cost = 0.0
        self._gc_due = 0.0  # when the collection planned was due (loop time)
        self._last_upgrade = 0.0  # when the last upgrade on the Codex path came (time.monotonic, as the loop's time)
        self.ws_support: dict[str, tuple[bool, float]] = {}  # auto mode: upstream -> (speaks WS, until)
        self.upgrade_memory = UpgradeMemory()  # what Codex reads only at the 101, as each upstream last said it
        self._configs: dict[tuple[str, str], SessionConfig] = {}  # by upstream and proxy mode, until an option changes

    def load(self, loader) -> None:
        add_on_disconnect_option(loader)
        add_message_hook_option(loader)
        loader.add_option(
            "codexbridge_mode", str, "bridge",
            "What to do with a WebSocket upgrade on the bridged path. 'bridge' answers it at the proxy "
            "and turns each response.create into a streaming POST to the upstream; 'passthrough' relays "
            "it to an upstream that speaks the WebSocket mode itself, adding the downstream keepalive; "
            "'auto' tries the upstream's upgrade first and bridges when the upstream refuses it "
            "(404/405/426), remembering the answer per upstream for codexbridge_auto_ttl seconds; "
            "'reject' answers 426 at once, so Codex falls back to HTTP after a single attempt; 'off' "
            "leaves all traffic alone (the keepalive, recorder and metrics addons loaded with the bridge too).",
            choices=MODES,
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
            "codexbridge_auto_ttl", int, 3600,
            "In auto mode, seconds to remember whether an upstream accepted or refused the WebSocket upgrade.",
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
            "source of throughput jitter in codexbridge bench. Full collections, which the tuning makes rare, "
            f"run instead {GC_AFTER_END:g} s after WebSocket sessions end (mitmproxy's own objects hold a "
            f"finished flow in reference cycles), at most {GC_SHARE:.0%} of the time, and once no new upgrade has come "
            f"for {GC_LULL:g} s (at most {GC_MAX_DELAY:g} s later), so that a connection storm is not paused by one.",
        )
        loader.add_option(
            "codexbridge_upgrade_headers", Sequence[str], [],
            "Headers for every 101 the bridge answers, as NAME:VALUE (repeat the option for more). Codex reads "
            f"{' and '.join(UPGRADE_ONLY_HEADERS)} over WebSocket only from the 101, which the bridge sends "
            "before any POST: by default it repeats what the same upstream's last answer said (the first session "
            "to an upstream after a start gets nothing). A header named here is always sent with this value; "
            "NAME: with no value is never sent.",
        )
        loader.add_option(
            "codexbridge_fast_path", bool, True,
            "Serve a bridged WebSocket upgrade straight from the reverse-mode listener: codexbridge looks at each new "
            "connection's first request head (over TLS, once it has done the handshake with mitmproxy's TLS hooks), "
            "and when it is an upgrade the bridge answers, runs that connection itself (the same hooks, flow, "
            "keepalive, recording and metrics) instead of mitmproxy's per-connection layers, which cost several times "
            "more CPU per connection; every other connection (other paths, plain HTTP, passthrough upgrades, other "
            "proxy modes) goes to mitmproxy, a TLS one with its handshake done. Off: every connection goes to "
            "mitmproxy.",
        )
        loader.add_option(
            "codexbridge_stream_sse", bool, True,
            "Stream every text/event-stream response through as it arrives instead of buffering the whole "
            "body (mitmproxy's default), so Codex in HTTP mode sees events live.",
        )
        super().load(loader)

    def configure(self, updated: set[str]) -> None:
        super().configure(updated)
        self._configs.clear()
        opts = ctx.options
        for name in ("codexbridge_connect_timeout", "codexbridge_read_timeout", "codexbridge_max_stored_responses",
                     "codexbridge_auto_ttl", "codexbridge_max_lanes", "codexbridge_max_active", "codexbridge_max_queued"):
            if name in updated and getattr(opts, name) < 1:
                raise exceptions.OptionsError(f"{name} must be at least 1.")
        if "codexbridge_max_frame_bytes" in updated and opts.codexbridge_max_frame_bytes < 0:
            raise exceptions.OptionsError("codexbridge_max_frame_bytes must be 0 (no limit) or positive.")
        if "codexbridge_max_stored_bytes" in updated and opts.codexbridge_max_stored_bytes < 0:
            raise exceptions.OptionsError("codexbridge_max_stored_bytes must be 0 (no bound) or positive.")
        if "codexbridge_upgrade_headers" in updated:
            pinned: dict[str, str] = {}
            for item in opts.codexbridge_upgrade_headers:
                name, sep, value = item.partition(":")
                if not sep or not name.strip() or any(c in item for c in "\r\n"):
                    raise exceptions.OptionsError(f"codexbridge_upgrade_headers takes NAME:VALUE, not {item!r}.")
                pinned[name.strip()] = value.strip()
            self.upgrade_memory.pinned = {k.lower(): v for k, v in pinned.items()}
        if "codexbridge_mode" in updated and opts.codexbridge_mode != "off" and not opts.websocket:
            raise exceptions.OptionsError("codexbridge needs mitmproxy's 'websocket' option to be on.")
        self._take_upgrades()

    def _take_upgrades(self) -> None:
        """Tells the listeners' fast path whether (and which) upgrades to take from now on."""
        if not self.active:
            return  # (a second bridge loaded stays idle: the first one decides)
        opts = ctx.options
        on = (opts.codexbridge_fast_path and opts.codexbridge_mode in ("bridge", "auto")
              and not (opts.ignore_hosts or opts.allow_hosts or opts.tcp_hosts))  # those need mitmproxy's next layer
        mitm.take_upgrades(opts.codexbridge_path, self.would_bridge if on else None)

    def would_bridge(self, flow: http.HTTPFlow) -> bool:
        """Whether request() would answer this upgrade with its 101 (the fast path's question)."""
        mode = ctx.options.codexbridge_mode
        if not self.active:
            return False
        fields = upgrade_fields(flow.request)
        if fields is None or fields[0] != "13" or not fields[1] or not on_codex_path(flow):
            return False
        if mode == "auto":
            known = self.ws_support.get(self.upstream_key(flow))
            return known is not None and known[1] > time.monotonic() and not known[0]
        return mode == "bridge"

    def running(self) -> None:
        if not self.active or ctx.options.codexbridge_mode == "off":
            return
        if ctx.options.connection_strategy == "eager":
            log.info(
                "connection_strategy=eager opens an unused upstream connection per client; "
                "--set connection_strategy=lazy avoids it."
            )
        if ctx.options.codexbridge_gc_tuning:
            gc.collect()
            gc.freeze()
            young, middle, old = gc.get_threshold()
            gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)
            self._gc_tuned = True

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        """A WebSocket session ended: its flow (and every frame it kept) is freed by the next full collection."""
        if self._gc_tuned and self._gc_timer is None:
            loop = asyncio.get_running_loop()
            wait = max(GC_AFTER_END, self._gc_last + self._gc_cost / GC_SHARE - loop.time())
            self._gc_due = loop.time() + wait
            self._gc_timer = loop.call_later(wait, self._collect)

    def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        quiet = time.monotonic() - self._last_upgrade
        if quiet < GC_LULL and loop.time() < self._gc_due + GC_MAX_DELAY:
            self._gc_timer = loop.call_later(GC_LULL - quiet, self._collect)
            return
        self._gc_timer = None
        started = time.perf_counter()
        found = gc.collect()
        self._gc_cost = time.perf_counter() - started
        self._gc_last = asyncio.get_running_loop().time()
        log.debug("stage=gc_after_sessions unreachable=%d ms=%.1f", found, self._gc_cost * 1000)

    def _config(self, flow: http.HTTPFlow, upstream: str) -> SessionConfig:
        """The session configuration for this upstream and proxy mode, made once per option change (frozen:
        sessions share it)."""
        mode = flow.client_conn.proxy_mode
        key = (upstream, mode.full_spec)
        config = self._configs.get(key)
        if config is None:
            opts = ctx.options
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
                upgrade_memory=self.upgrade_memory,
            )
            if len(self._configs) >= MAX_CONFIGS:
                self._configs.clear()
            self._configs[key] = config
        return config

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

    def request(self, flow: http.HTTPFlow) -> None:
        mode = ctx.options.codexbridge_mode
        if mode == "off" or flow.response is not None or not self.active:
            return
        fields = upgrade_fields(flow.request)
        if fields is None or not on_codex_path(flow):
            return
        self._last_upgrade = time.monotonic()
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
            flow.metadata.setdefault("codexbridge", {"mode": "passthrough"})
            return  # relayed by mitmproxy; the keepalive and recorder addons plan the flow at its 101
        self.bridge(flow, fields)

    @staticmethod
    def upstream_key(flow: http.HTTPFlow) -> str:
        r = flow.request
        return f"{r.scheme}://{r.pretty_host}:{r.port}"

    def bridge(self, flow: http.HTTPFlow, fields: tuple[str, str] | None = None) -> None:
        """Answers the upgrade with a synthetic 101 and attaches a bridge session to the flow (`fields`: the
        upgrade's Sec-WebSocket-Version and -Key, when the caller has them)."""
        if fields is None:
            fields = handshake_fields(flow.request)[2:]
        version, key = fields
        if version != "13" or not key:
            flow.response = http.Response.make(
                426 if key else 400, b"WebSocket version 13 with a Sec-WebSocket-Key is required.\n",
                {"Sec-WebSocket-Version": "13", "Content-Type": "text/plain"},
            )
            return
        upstream = upstream_url(flow)
        config = self._config(flow, upstream)
        try:
            outbox = mitm.ClientOutbox(flow)
        except ValueError:
            return
        # (the handshake's headers as they are now, decoded when the session first needs them)
        session = BridgeSession(config, flow.request.headers.items(multi=True), outbox, self.pool)
        self.sessions.add(session)
        session.closed_callback = self.sessions.discard
        plan = mitm.plan_of(flow)
        plan.hooks, plan.outbox, plan.message_hook = session, outbox, ctx.options.codexbridge_message_hook
        flow.metadata["codexbridge"] = {"mode": "bridge", "upstream": upstream}
        flow.response = mitm.switching_protocols(
            [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Accept", accept_token(key).encode()),
             *((n.encode(), v.encode()) for n, v in self.upgrade_memory.upgrade_headers(upstream))],
        )
        registry.plan_websocket(flow)  # keepalive, recording and metrics of this session, by the addons loaded
        session.recorder, session.meter = plan.recorder, plan.meter

    def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("codexbridge")
        if not self.active or not meta or meta.get("mode") != "auto" or flow.response is None:
            return
        status = flow.response.status_code
        accepted = status == 101
        if accepted or status in REFUSALS:
            until = time.monotonic() + ctx.options.codexbridge_auto_ttl
            self.ws_support[self.upstream_key(flow)] = (accepted, until)
            log.info("stage=auto_probe upstream=%s websocket=%s status=%d", self.upstream_key(flow),
                     "yes" if accepted else "no", status)
        if status in REFUSALS:
            refusal, flow.response = flow.response, None
            self.bridge(flow)
            if flow.response is None:
                flow.response = refusal
            if flow.response is not None and flow.response.status_code == 101:
                flow.websocket = WebSocketData()  # mitmproxy decided before this hook that it was not one
                mitm.detach_server(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if (
            response is not None
            and ctx.options.codexbridge_stream_sse
            and not response.stream
            and header(response.headers, b"content-type").lower().startswith("text/event-stream")
        ):
            response.stream = True

    async def done(self) -> None:
        if self.active:
            mitm.take_upgrades("/", None)
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            self._gc_timer = None
        self.unload()
        await self.pool.aclose()
