"""`codexbridge inspect`: one recording as a timeline of rows plus a per-response summary (data, then rich)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from codexbridge.recording.schema import (
    ClientFrame,
    Close,
    Complete,
    Error,
    Event,
    Ping,
    Pong,
    Recording,
    ServerFrame,
    TextKeepalive,
    ToClient,
    UpstreamChunk,
    UpstreamEnd,
    UpstreamRequest,
    UpstreamResponse,
)
from codexbridge.replay.rules import chunk_bytes
from codexbridge.responses.events import TERMINAL_EVENTS
from codexbridge.wire.sse import SseDecoder

DELTA = "response.output_text.delta"
SLOW_GAP_MS = 1000.0


@dataclass(slots=True)
class Row:
    """One line of the timeline: an event, or a collapsed run of upstream chunks or text deltas."""

    first: int  # event index
    last: int
    t_ms: float
    direction: str
    summary: str
    style: str = ""
    gap_ms: float = 0.0
    count: int = 0  # events or frames in a collapsed run
    size: int = 0  # its bytes (chunks) or characters (deltas)


@dataclass(slots=True)
class Problem:
    t_ms: float
    source: str  # error_frame | upstream_status | upstream_end | error_event
    status: int | None = None
    code: str | None = None
    message: str = ""


@dataclass(slots=True)
class ResponseStats:
    """One response.create (in http mode: one POST) and what the client received for it; times after its frame."""

    response_id: str | None
    client_event: int
    t_ms: float
    model: str | None = None
    prewarm: bool = False  # generate: false
    status: str | None = None  # the terminal event's type; None when the response never ended
    first_event_ms: float | None = None
    ttft_ms: float | None = None  # to the first response.output_text.delta
    duration_ms: float | None = None  # to the terminal event
    deltas: int = 0
    delta_chars: int = 0
    usage: dict[str, int] | None = None  # input_tokens, output_tokens, total_tokens of the terminal event
    errors: list[Problem] = field(default_factory=list)


@dataclass(slots=True)
class Summary:
    mode: str
    complete: bool
    events: int
    duration_ms: float
    responses: list[ResponseStats] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    pings: int = 0
    pongs: int = 0
    rtt_ms_avg: float | None = None
    rtt_ms_max: float | None = None
    text_keepalives: int = 0
    longest_silence_ms: float | None = None  # no frame nor text keepalive to the client while a response was pending
    longest_silence_at_ms: float | None = None
    close: str | None = None


def _json(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text or "")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _ms(e: Event) -> float:
    return round(e.t * 1000, 3)


def _texts(e: Event) -> list[str]:
    """The text frames an event sent to the client."""
    if isinstance(e, ToClient):
        return e.frames
    return [e.text] if isinstance(e, ServerFrame) and e.text is not None else []


def _stream(rec: Recording) -> Iterator[tuple[str, int, float, dict[str, Any] | None]]:
    """("request" | "frame" | "keepalive", event index, ms, parsed JSON), as the client saw them."""
    http, decoder = rec.header.mode == "http", SseDecoder()
    for i, e in enumerate(rec.events):
        if isinstance(e, ClientFrame) and not http:
            obj = _json(e.text)
            if obj is not None and obj.get("type") == "response.create":
                yield "request", i, _ms(e), obj
        elif isinstance(e, UpstreamRequest) and http:
            decoder = SseDecoder()
            yield "request", i, _ms(e), _json(e.body) or {}
        elif isinstance(e, UpstreamChunk) and http:
            for ev in decoder.feed(chunk_bytes(e)):
                yield "frame", i, _ms(e), _json(ev.data.decode("utf-8", "replace"))
        elif isinstance(e, TextKeepalive):
            yield "keepalive", i, _ms(e), None
        for text in _texts(e):
            yield "frame", i, _ms(e), _json(text)


def _error_problem(ms: float, obj: dict[str, Any]) -> Problem:
    err = obj["error"] if isinstance(obj.get("error"), dict) else {}
    return Problem(ms, "error_frame", obj.get("status"), err.get("code") or obj.get("code"),
                   str(err.get("message") or obj.get("message") or ""))


def summarize(rec: Recording) -> Summary:
    s = Summary(rec.header.mode, rec.complete, len(rec.events), _ms(rec.events[-1]) if rec.events else 0.0)
    cur: ResponseStats | None = None
    last_out: float | None = None  # the last write to the client while a response is pending
    for what, i, ms, obj in _stream(rec):
        if what == "request":
            cur = ResponseStats(None, i, ms, (obj or {}).get("model"), (obj or {}).get("generate") is False)
            s.responses.append(cur)
            last_out = ms
            continue
        if last_out is not None:
            if ms - last_out > (s.longest_silence_ms or 0.0):
                s.longest_silence_ms, s.longest_silence_at_ms = round(ms - last_out, 3), last_out
            last_out = ms
        if obj is None:
            continue
        typ = obj.get("type")
        if typ == "error":
            s.errors.append(_error_problem(ms, obj))
        if cur is None or cur.status is not None:
            continue
        response = obj["response"] if isinstance(obj.get("response"), dict) else {}
        cur.response_id = cur.response_id or response.get("id") or obj.get("response_id")
        cur.first_event_ms = round(ms - cur.t_ms, 3) if cur.first_event_ms is None else cur.first_event_ms
        if typ == DELTA:
            cur.deltas += 1
            cur.delta_chars += len(obj.get("delta") or "")
            cur.ttft_ms = round(ms - cur.t_ms, 3) if cur.ttft_ms is None else cur.ttft_ms
        elif typ == "error":
            cur.errors.append(s.errors[-1])
        if typ in TERMINAL_EVENTS:
            cur.status, cur.duration_ms, last_out = typ, round(ms - cur.t_ms, 3), None
            if isinstance(usage := response.get("usage"), dict):
                cur.usage = {k: usage[k] for k in ("input_tokens", "output_tokens", "total_tokens") if k in usage}
    rtts: list[float] = []
    for i, e in enumerate(rec.events):
        s.pings += isinstance(e, Ping)
        s.text_keepalives += isinstance(e, TextKeepalive)
        if isinstance(e, Pong):
            s.pongs += 1
            rtts += [e.rtt_ms] if e.rtt_ms is not None else []
        elif isinstance(e, UpstreamResponse) and e.status >= 400:
            s.errors.append(Problem(_ms(e), "upstream_status", e.status))
            if owner := next((r for r in reversed(s.responses) if r.client_event < i), None):
                owner.errors.append(s.errors[-1])
        elif isinstance(e, UpstreamEnd) and e.error:
            s.errors.append(Problem(_ms(e), "upstream_end", message=e.error))
        elif isinstance(e, Error):
            s.errors.append(Problem(_ms(e), "error_event", message=f"{e.where}: {e.message}"))
        elif isinstance(e, Close):
            s.close = f"{e.code} by {e.by}" + (f" ({e.reason})" if e.reason else "")
    for problems in (s.errors, *(r.errors for r in s.responses)):
        problems.sort(key=lambda p: p.t_ms)
    if rtts:
        s.rtt_ms_avg, s.rtt_ms_max = round(sum(rtts) / len(rtts), 3), max(rtts)
    return s


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} kB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"


def _client_summary(e: ClientFrame) -> str:
    if e.text is None:
        return f"binary frame, {_size(len(e.b64 or '') * 3 // 4)}"
    if (obj := _json(e.text)) is None:
        return f"non-JSON text, {_size(len(e.text.encode()))}"
    out = str(obj.get("type"))
    if obj.get("type") == "response.create":
        items = obj.get("input")
        out += f" model={obj.get('model')} prev={obj.get('previous_response_id') or '—'}"
        out += f" input={len(items) if isinstance(items, list) else '?'} items"
        out += f" generate={str(obj['generate']).lower()}" if "generate" in obj else ""
    return out


def _frame_label(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return "non-JSON frame"
    if obj.get("type") == "error":
        p = _error_problem(0, obj)
        return f"error {p.status} {p.code}"
    return str(obj.get("type")).removeprefix("response.")


def _status(e: UpstreamResponse) -> str:
    return f"{e.status} " + next((v for n, v in e.headers if n.lower() == "content-type"), "")


# (direction, summary, style) of each kind of event that is not collapsed into a run
_DESCRIBE: dict[type, Callable[[Any], tuple[str, str, str]]] = {
    ClientFrame: lambda e: ("client →", _client_summary(e), "cyan"),
    UpstreamRequest: lambda e: ("→ upstream", f"{e.method} {e.url} ({_size(len(e.body.encode()))})", "magenta"),
    UpstreamResponse: lambda e: ("upstream →", _status(e), "bold red" if e.status >= 400 else "magenta"),
    UpstreamEnd: lambda e: ("upstream →", f"end: {e.error}" if e.error else "end", "red" if e.error else "magenta"),
    Ping: lambda e: ("→ client", "ping", "dim"),
    Pong: lambda e: ("client →", "pong" + (f" rtt {e.rtt_ms:.1f} ms" if e.rtt_ms is not None else ""), "dim"),
    TextKeepalive: lambda e: ("→ client", "text keepalive", "dim"),
    Close: lambda e: ("close", f"{e.code} by {e.by}" + (f" ({e.reason})" if e.reason else ""), "yellow"),
    Error: lambda e: ("error", f"{e.where}: {e.message}", "bold red"),
    ServerFrame: lambda e: ("→ client", f"binary frame, {_size(len(e.b64 or '') * 3 // 4)}", "green"),
    ToClient: lambda e: ("→ client", "an empty write", "dim"),
    Complete: lambda e: ("end", "complete", "dim"),
}


def _over(run: Row, e: Event) -> str:
    return f" over {_f(_ms(e) - run.t_ms)} ms" if _ms(e) > run.t_ms else ""


def rows(rec: Recording) -> list[Row]:
    """One row per event, except that runs of upstream chunks and of output_text.delta frames collapse."""
    out: list[Row] = []
    deltas: Row | None = None
    chunks: Row | None = None  # a run of chunks goes on across what the bridge forwards meanwhile

    def add(i: int, ms: float, direction: str, summary: str, style: str) -> Row:
        out.append(Row(i, i, ms, direction, summary, style))
        return out[-1]

    for i, e in enumerate(rec.events):
        if isinstance(e, UpstreamChunk):
            chunks = chunks or add(i, _ms(e), "upstream →", "", "magenta")
            chunks.last, chunks.count, chunks.size = i, chunks.count + 1, chunks.size + len(chunk_bytes(e))
            chunks.summary = f"{chunks.count} chunk{'s' * (chunks.count > 1)}, {_size(chunks.size)}" + _over(chunks, e)
            continue
        if not isinstance(e, ToClient | ServerFrame | Ping | Pong | TextKeepalive):
            chunks = None
        if not (texts := _texts(e)):
            deltas = None
            add(i, _ms(e), *_DESCRIBE[type(e)](e))
            continue
        tag = " (synthetic)" if isinstance(e, ToClient) and e.synthetic else ""
        others: list[str] = []
        for obj in map(_json, texts):
            if obj is None or obj.get("type") != DELTA:
                deltas = None
                others.append(_frame_label(obj))
                continue
            if others:
                add(i, _ms(e), "→ client", ", ".join(others) + tag, "green")
                others = []
            deltas = deltas or add(i, _ms(e), "→ client", "", "green")
            deltas.last, deltas.count, deltas.size = i, deltas.count + 1, deltas.size + len(obj.get("delta") or "")
            deltas.summary = f"{deltas.count} × output_text.delta ({deltas.size} chars)" + _over(deltas, e)
        if others:
            add(i, _ms(e), "→ client", ", ".join(others) + tag, "bold red" if "error" in others[0] else "green")
    for prev, row in zip([None, *out], out, strict=False):
        row.gap_ms = round(row.t_ms - (prev.t_ms if prev else 0.0), 3)
    return out


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def render(rec: Recording, console: Console, title: str = "recording") -> None:
    s, h = summarize(rec), rec.header
    state = "[green]complete[/]" if s.complete else "[bold red]cut off: no `complete` line (the proxy died?)[/]"
    extra = f" + {len(h.redaction)} extra: {', '.join(h.redaction)}" if h.redaction else ""
    console.print(Panel(escape(
        f"mode {h.mode}, upstream {h.upstream}\nstarted {h.started_at} by codexbridge {h.tool_version}\n"
        f"request {h.request.method} {h.request.url}\n") + f"{state}, {s.events} events over {_f(s.duration_ms)} ms\n"
        + escape((f"strings over {h.elide_over} chars elided" if h.elide_over else "no elision")
                 + f"; redaction: built-in patterns{extra}"), title=escape(title), expand=False))
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for name in ("#", "t ms", "+gap ms", "dir", "summary"):  # only the last column shrinks, to an ellipsis
        table.add_column(name, justify="left" if name in ("dir", "summary") else "right", no_wrap=name != "summary")
    for r in rows(rec):
        gap = f"[bold yellow]{_f(r.gap_ms)}[/]" if r.gap_ms > SLOW_GAP_MS else _f(r.gap_ms)
        span = str(r.first) if r.first == r.last else f"{r.first}–{r.last}"
        table.add_row(span, _f(r.t_ms), gap, r.direction, Text(r.summary, r.style, no_wrap=True, overflow="ellipsis"))
    console.print(table)
    render_summary(s, console)


def render_summary(s: Summary, console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, title="responses", title_justify="left")
    for name in ("response", "#", "1st event ms", "TTFT ms", "took ms", "deltas (chars)", "tokens i/o/all", "end"):
        table.add_column(name, justify="left" if name in ("response", "end") else "right", no_wrap=name != "end")
    for r in s.responses:
        rid = r.response_id or "—"
        u = r.usage or {}
        tokens = "/".join(str(u.get(k, "?")) for k in ("input_tokens", "output_tokens", "total_tokens")) if u else "—"
        end = escape((r.status or "never ended").removeprefix("response.")) + (" (prewarm)" if r.prewarm else "")
        end += ": " * bool(r.errors) + ", ".join(
            f"[red]{'upstream ' * (p.source == 'upstream_status')}{p.status}{escape(' ' + p.code if p.code else '')}[/]"
            for p in r.errors)
        table.add_row(rid if len(rid) <= 20 else f"{rid[:11]}…{rid[-8:]}", str(r.client_event), _f(r.first_event_ms),
                      _f(r.ttft_ms), _f(r.duration_ms), f"{r.deltas} ({r.delta_chars})", tokens, end)
    console.print(table if s.responses else "no responses")
    rtt = f" (rtt avg {s.rtt_ms_avg:.1f} ms, max {s.rtt_ms_max:.1f} ms)" if s.rtt_ms_max is not None else ""
    silence = f" from t={_f(s.longest_silence_at_ms)} ms" if s.longest_silence_at_ms is not None else ""
    console.print(f"pings sent {s.pings}, pongs received {s.pongs}{rtt}; text keepalives {s.text_keepalives}\n"
                  f"longest silence toward the client while a response was pending: {_f(s.longest_silence_ms)} ms"
                  f"{silence}\nclose: {escape(s.close or '—')}; errors: {len(s.errors) or 'none'}")
    for p in s.errors:
        detail = escape(f"{p.status or ''} {p.code or ''} {p.message}")
        console.print(f"  [red]{_f(p.t_ms)} ms {p.source}[/] {detail}", no_wrap=True, overflow="ellipsis")
