"""The metrics addon: plain integer counters on the hot path, served to Prometheus by a collector that reads them."""

from __future__ import annotations

import json
import logging
import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions, http

from codexbridge import mitm
from codexbridge.addons.common import (
    METRICS,
    CodexAddon,
    codex_post,
    is_websocket_upgrade,
    on_codex_path,
    registry,
    tap_event_stream,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from codexbridge.bridge.response_run import ResponseRun

log = logging.getLogger("codexbridge")

# A terminal event read from the start of a frame (OpenAI puts "type" first): no JSON parse per event.
_TERMINAL = re.compile(rb'\s*\{\s*"type"\s*:\s*"(response\.(?:completed|failed|incomplete|cancelled)|error)"')
_SSE_TERMINAL = re.compile(rb'"type"\s*:\s*"(response\.(?:completed|failed|incomplete|cancelled)|error)"')
_CREATE = re.compile(rb'\s*\{\s*"type"\s*:\s*"response\.create"')
OUTCOMES = {"response.completed": "completed", "response.failed": "failed", "response.incomplete": "incomplete",
            "response.cancelled": "cancelled", "error": "error"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Bucket counts, sum and count in plain numbers; observe() is a bisect and three additions."""

    __slots__ = ("bounds", "counts", "total", "n")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets as prometheus_client wants them, +Inf last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Counts:
    """Every figure the metrics addon serves, as plain integers and dicts the event loop updates."""

    def __init__(self) -> None:
        self.sessions_open: dict[str, int] = {}
        self.sessions_total: dict[str, int] = {}
        self.responses: dict[str, int] = {}  # outcome -> count
        self.error_frames: dict[str, int] = {}  # error code -> count
        self.upstream_status: dict[str, int] = {}
        self.first_event = Histogram(LATENCY_BUCKETS)
        self.duration = Histogram(LATENCY_BUCKETS)
        self.ping_rtt = Histogram(PING_BUCKETS)
        self.pong_timeouts = 0
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0
        self.recording_failures: Callable[[], int] = lambda: 0

    @staticmethod
    def bump(table: dict[str, int], key: str, by: int = 1) -> None:
        table[key] = table.get(key, 0) + by

    def session_opened(self, mode: str) -> None:
        self.bump(self.sessions_open, mode)
        self.bump(self.sessions_total, mode)

    def session_closed(self, mode: str) -> None:
        self.bump(self.sessions_open, mode, -1)

    def response_ended(self, outcome: str, started: float, first_event: float | None, ended: float) -> None:
        self.bump(self.responses, outcome)
        if first_event is not None:
            self.first_event.observe(first_event - started)
        self.duration.observe(ended - started)

    def error_frame(self, content: bytes) -> None:
        try:
            error = json.loads(content).get("error") or {}
            code = str(error.get("code") or error.get("type") or "unknown")
        except (ValueError, AttributeError):
            code = "unknown"
        self.bump(self.error_frames, code)


class FlowMeter:
    """One WebSocket flow's view of the counters (mitm.FlowMeter): told by the flow's outbox per write, by its
    layer per client frame (and per relayed server frame), by its keepalive per pong, and by the bridge session
    once per response. Relayed responses are timed from their response.create to their terminal event."""

    __slots__ = ("counts", "bridged", "created")

    def __init__(self, counts: Counts, bridged: bool) -> None:
        self.counts = counts
        self.bridged = bridged
        self.created: deque[list[float | None]] = deque()  # relayed: [create time, first event time] per response

    def client_frame(self, content: bytes) -> None:
        c = self.counts
        c.frames_in += 1
        c.bytes_in += len(content)
        if not self.bridged and _CREATE.match(content) is not None:
            self.created.append([time.monotonic(), None])

    def to_client(self, frames: int, nbytes: int) -> None:
        c = self.counts
        c.frames_out += frames
        c.bytes_out += nbytes

    def server_event(self, content: bytes) -> None:
        """A relayed server frame: the first event and the terminal event of the oldest open response."""
        created = self.created
        if created and created[0][1] is None:
            created[0][1] = time.monotonic()
        match = _TERMINAL.match(content)
        if match is None:
            return
        kind = match.group(1).decode()
        if kind == "error":
            self.counts.error_frame(content)
        if created:
            started, first = created.popleft()
            assert started is not None
            self.counts.response_ended(OUTCOMES[kind], started, first, time.monotonic())
        else:
            self.counts.bump(self.counts.responses, OUTCOMES[kind])

    def client_gone(self) -> None:
        """The session ended: relayed responses still waiting for their terminal event end as client_gone."""
        now = time.monotonic()
        while self.created:
            started, first = self.created.popleft()
            assert started is not None
            self.counts.response_ended("client_gone", started, first, now)

    def response_ended(self, run: ResponseRun, client_gone: bool) -> None:
        """A bridged response is over (told by its session once, when its task ends). client_gone: the client left
        before its terminal event (a drained response completes later, still without that client); a client that
        has its answer and leaves at once only cancels the read of the body's rest, and counts by its terminal."""
        c = self.counts
        if run.upstream_status is not None:
            c.bump(c.upstream_status, str(run.upstream_status))
        if run.error_frame is not None:
            c.error_frame(run.error_frame)
        terminal = run.tracker.terminal
        if client_gone:
            outcome = "client_gone"
        elif terminal is not None:
            outcome = OUTCOMES.get(terminal, "error")
        else:
            outcome = "error"  # an error frame: upstream error, timeout, truncated stream
        c.response_ended(outcome, run.started, run.first_event_at, time.monotonic())

    def error_frame(self, frame: bytes) -> None:
        self.counts.error_frame(frame)

    def pong(self, rtt: float) -> None:
        self.counts.ping_rtt.observe(rtt)

    def pong_timeout(self) -> None:
        self.counts.pong_timeouts += 1


@dataclass(slots=True)
class HttpExchange:
    """One POST on the Codex path (Codex in HTTP mode): when it started, its first chunk, terminal events seen."""

    started: float
    first: float | None = None
    outcomes: list[str] = field(default_factory=list)


class Collector:
    """A prometheus_client collector reading the plain counters at scrape time (in the server's thread)."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        c = self.counts

        def labelled(family: Any, label: str, table: dict[str, int]) -> Any:
            for key, value in sorted(dict(table).items()):
                family.add_metric([key], value)
            return family

        yield labelled(GaugeMetricFamily("codexbridge_sessions_open", "Codex sessions open now, by mode "
                                         "(bridge, passthrough, http).", labels=["mode"]), "mode", c.sessions_open)
        yield labelled(CounterMetricFamily("codexbridge_sessions", "Codex sessions started, by mode.",
                                           labels=["mode"]), "mode", c.sessions_total)
        yield labelled(CounterMetricFamily(
            "codexbridge_responses", "Responses ended, by outcome: completed, failed, incomplete, cancelled, "
            "error (an error frame or event), client_gone (the client left before the terminal event).",
            labels=["outcome"]), "outcome", c.responses)
        yield labelled(CounterMetricFamily("codexbridge_error_frames", "Error frames and events sent to clients, "
                                           "by error code.", labels=["code"]), "code", c.error_frames)
        yield labelled(CounterMetricFamily("codexbridge_upstream_responses", "Upstream answers by HTTP status "
                                           "(the bridge's POSTs, HTTP-mode POSTs, relayed upgrades).",
                                           labels=["status"]), "status", c.upstream_status)
        for name, doc, hist in (
            ("codexbridge_first_event_seconds", "Seconds from a response's request to its first event.", c.first_event),
            ("codexbridge_response_duration_seconds", "Seconds from a response's request to its end.", c.duration),
            ("codexbridge_ping_rtt_seconds", "Round trip of the keepalive's Pings to clients.", c.ping_rtt),
        ):
            yield HistogramMetricFamily(name, doc, buckets=hist.buckets(), sum_value=hist.total)
        yield CounterMetricFamily("codexbridge_pong_timeouts", "Clients closed because a Pong did not come in time.",
                                  value=c.pong_timeouts)
        frames = CounterMetricFamily("codexbridge_frames", "WebSocket data frames, by direction.", labels=["direction"])
        frames.add_metric(["from_client"], c.frames_in)
        frames.add_metric(["to_client"], c.frames_out)
        yield frames
        nbytes = CounterMetricFamily("codexbridge_frame_bytes", "WebSocket payload bytes, by direction.",
                                     labels=["direction"])
        nbytes.add_metric(["from_client"], c.bytes_in)
        nbytes.add_metric(["to_client"], c.bytes_out)
        yield nbytes
        yield CounterMetricFamily("codexbridge_recording_failures", "Times recording stopped working.",
                                  value=c.recording_failures())


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def recording_failures() -> int:
    """From the recorder addon loaded now, if any (it may load after this one)."""
    sink = getattr(registry.active("recorder"), "sink", None)
    return sink.failures if sink is not None else 0


class Metrics(CodexAddon):
    """Serves Prometheus metrics of the Codex sessions the other codexbridge addons handle."""

    concern = METRICS

    def __init__(self) -> None:
        super().__init__()
        self.counts = Counts()
        self.server: WSGIServer | None = None
        self.address: tuple[str, int] | None = None
        self._http: dict[str, HttpExchange] = {}
        self._meters: dict[str, FlowMeter] = {}  # WebSocket flows, until their end

    @property
    def on(self) -> bool:
        return self.server is not None and self.active

    def load(self, loader) -> None:
        loader.add_option(
            "codexbridge_metrics", str, "",
            "HOST:PORT to serve Prometheus metrics on (GET /metrics): sessions, responses by outcome, upstream "
            "statuses, first-event and duration histograms, ping round trips, frames and bytes, recording "
            "failures. Port 0 picks a free port (logged). Empty (the default) serves nothing and counts nothing.",
        )
        super().load(loader)

    def configure(self, updated: set[str]) -> None:
        super().configure(updated)
        if "codexbridge_metrics" not in updated or not self.active:
            return
        self._stop()
        value = ctx.options.codexbridge_metrics
        if not value:
            return
        try:
            host, port = parse_address(value)
        except ValueError as e:
            raise exceptions.OptionsError(f"codexbridge_metrics: {e}") from e
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as e:
            raise exceptions.OptionsError(f"codexbridge_metrics needs prometheus_client: {e}") from e
        collectors = CollectorRegistry(auto_describe=False)
        collectors.register(Collector(self.counts))
        try:
            self.server, _ = start_http_server(port, host, registry=collectors)
        except OSError as e:
            raise exceptions.OptionsError(f"codexbridge_metrics: cannot listen on {host}:{port}: {e.strerror or e}") from e
        self.address = (host, self.server.server_port)
        self.counts.recording_failures = recording_failures
        log.info("codexbridge metrics on http://%s:%d/metrics", host, self.address[1])

    # -- WebSocket sessions -----------------------------------------------------------------

    def plan_websocket(self, flow: http.HTTPFlow) -> None:
        if not self.on:
            return
        plan = mitm.plan_of(flow)
        if plan.meter is None:
            plan.meter = self._meters[flow.id] = FlowMeter(self.counts, bridged=plan.hooks is not None)

    def response(self, flow: http.HTTPFlow) -> None:
        if not self.on or registry.bridge_off() or flow.response is None or not on_codex_path(flow):
            return
        exchange = self._http.pop(flow.id, None)
        if exchange is not None:
            self._http_ended(flow, exchange)
            return
        if not is_websocket_upgrade(flow.request):
            return
        meta = flow.metadata.get("codexbridge") or {}
        if meta.get("mode") != "bridge":
            self.counts.bump(self.counts.upstream_status, str(flow.response.status_code))
        if flow.websocket is not None and flow.response.status_code == 101:
            self.plan_websocket(flow)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        if self.on and on_codex_path(flow) and not registry.bridge_off():
            self.counts.session_opened(self._mode(flow))
            flow.metadata["codexbridge_metered"] = True

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        meter = self._meters.pop(flow.id, None)
        if meter is not None:
            meter.client_gone()
        if flow.metadata.pop("codexbridge_metered", None):
            self.counts.session_closed(self._mode(flow))

    @staticmethod
    def _mode(flow: http.HTTPFlow) -> str:
        meta = flow.metadata.get("codexbridge") or {}
        return "bridge" if meta.get("mode") == "bridge" else "passthrough"

    # -- HTTP + SSE (Codex in HTTP mode) ----------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if not self.on or not codex_post(flow) or registry.bridge_off():
            return
        self._http[flow.id] = HttpExchange(time.monotonic())
        self.counts.session_opened("http")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange = self._http.get(flow.id)
        response = flow.response
        if exchange is None or response is None:
            return
        self.counts.bump(self.counts.upstream_status, str(response.status_code))

        def meter(chunk: bytes) -> None:
            if exchange.first is None:
                exchange.first = time.monotonic()
            if b'"type":"response.' in chunk or b'"type":"error"' in chunk:
                exchange.outcomes.extend(OUTCOMES[m.group(1).decode()] for m in _SSE_TERMINAL.finditer(chunk))

        tap_event_stream(response, meter)

    def _http_ended(self, flow: http.HTTPFlow, exchange: HttpExchange) -> None:
        self.counts.session_closed("http")
        status = flow.response.status_code if flow.response is not None else 0
        if exchange.outcomes:
            outcome = exchange.outcomes[-1]
        else:
            outcome = "error"  # an HTTP error, or a stream that ended before its terminal event
            self.counts.bump(self.counts.error_frames, f"upstream_http_{status}" if status != 200 else "upstream_stream_truncated")
        self.counts.response_ended(outcome, exchange.started, exchange.first, time.monotonic())

    def error(self, flow: http.HTTPFlow) -> None:
        exchange = self._http.pop(flow.id, None)
        if exchange is not None:
            self.counts.session_closed("http")
            self.counts.response_ended("client_gone", exchange.started, exchange.first, time.monotonic())
        super().error(flow)

    def _stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def done(self) -> None:
        self._stop()
        self.unload()


