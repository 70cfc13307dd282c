"""`codexbridge probe URL`: check a Responses endpoint the way Codex uses it and explain each layer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import CloseConnection, Message, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from codexbridge import __version__
from codexbridge.responses.events import TERMINAL_EVENTS
from codexbridge.wire.sse import SseDecoder
from codexbridge.wire.wsframes import accept_token

NGINX_WS = """map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
}
location /v1/ {
    proxy_pass http://your_backend;
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_buffering off;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
}
# Cloudflare Worker: pass the request on unchanged (`return fetch(request)`); rebuilding it from
# selected headers drops `Upgrade`. WebSockets must also be enabled for the zone."""
BRIDGE = """codexbridge run --upstream {origin}
# or: mitmdump -s addons/bridge.py --mode reverse:{origin} --set connection_strategy=lazy --set codexbridge_mode=bridge
# to only stop the 405 storm (Codex falls back to HTTP after one try): --set codexbridge_mode=reject"""
BUFFER_FIX = """location /v1/ {
    proxy_http_version 1.1;   # an HTTP/1.0 (close-delimited) upstream body is held until its end
    proxy_buffering off;
    gzip off;
}
# or have the app send the response header  X-Accel-Buffering: no
# codexbridge streams every text/event-stream itself (codexbridge_stream_sse=true, the default)"""
PING_FIX = """codexbridge run --upstream … --set codexbridge_ping_interval={n}
# codexbridge's Pings keep every layer between Codex and it busy; or raise that layer's timeout, e.g. nginx:
proxy_read_timeout 3600s;  proxy_send_timeout 3600s;"""
CA_FIX = ("Trust the CA: --ca ca.pem here; for Codex SSL_CERT_FILE=ca.pem or CODEX_CA_CERTIFICATE=ca.pem.\n"
          "--insecure skips verification for this probe only.")
RETRY = " Codex retries the upgrade and then falls back to HTTP for the session."
TEXTS: dict[str, tuple[str, str]] = {  # finding id -> (explanation, fix); {name} is filled in by finding()
    "unreachable": ("Nothing accepted a connection at that host and port.", "Check the URL, the port and firewalls."),
    "tls_error": ("The TLS handshake failed{why}. Codex fails the same way.", "{tls_fix}"),
    "upgrade_hang": ("A layer swallowed the upgrade: it took the request and never answered (a proxy that drops "
                     "`Upgrade` and then waits on the app, or a WebSocket-unaware load balancer). Codex hangs until "
                     "its own timeout.", NGINX_WS),
    "upgrade_dropped": ("The connection closed, or answered something that is not HTTP." + RETRY, NGINX_WS),
    "upgrade_ok": ("", ""),
    "upgrade_bad_accept": ("The 101 does not answer this request's Sec-WebSocket-Key: a layer forged or replayed the "
                           "handshake. Codex rejects it.", "Find the layer that answers the upgrade itself."),
    "upgrade_redirect": ("Codex's WebSocket client does not follow redirects, and a 301/302 turns its POST into a "
                         "GET.", "Use the final address as base_url (its …/v1 part) instead of {url}."),
    "upgrade_no_route": ("The app has no WebSocket route, only POST /responses. Every Codex session retries the "
                         "upgrade about 7 times (a 5-20 s stall, the '405 storm'), then falls back to HTTP.{hint}",
                         BRIDGE),
    "upgrade_server_error": ("The server failed the upgrade." + RETRY, "Read the server's log for this request."),
    "upgrade_stripped": ("A layer stripped or refused the upgrade: the app did not get `Upgrade: websocket` with "
                         "`Connection: upgrade` (nginx forwards neither unless told to), or a gateway refuses "
                         "WebSockets.{hint}" + RETRY, NGINX_WS),
    "failed": ("The request produced no event.", "Check the model name, the API key and the gateway's log."),
    "http_not_streaming": ("The answer to stream:true is not SSE; Codex cannot read it.", "Make the gateway pass "
                           "`stream: true` on and answer text/event-stream."),
    "response_error": ("The endpoint answered, but not with a completed response.", "Read the error text."),
    "truncated": ("The stream ended before response.completed; Codex reports 'stream disconnected before "
                  "completion' and retries.", "Look for a layer with a short read or idle timeout."),
    "http_buffered": ("A layer buffers the stream: events produced over time arrived at once, so Codex shows "
                      "nothing until the answer is complete, and long turns hit idle timeouts.{head}", BUFFER_FIX),
    "websocket_buffered": ("A layer holds WebSocket frames back and delivers them at once.", "Find the "
                           "WebSocket-unaware proxy or inspection gateway on the path."),
    "streaming": ("", ""),
    "streaming_unknown": ("Cannot tell streaming from buffering: {why}.{tip}", ""),
    "idle_ok": ("No layer closed the silent WebSocket that soon. nginx's default proxy_read_timeout is 60 s and "
                "Cloudflare's idle limit about 100 s: --idle 120 covers both.", ""),
    "idle_closed": ("Some layer closes a silent WebSocket after about {s} s. A Codex turn silent that long (a slow "
                    "tool, long reasoning) dies with 'websocket closed by server before response.completed'.",
                    PING_FIX),
    "idle_skipped": ("The idle check needs a successful upgrade.", ""),
}


@dataclass
class Finding:
    """One conclusion: what was measured at which layer, what it means, and how to fix it."""

    id: str
    layer: str  # network | tls | upgrade | websocket | http | idle
    severity: str  # ok | info | warn | error
    measured: str
    explanation: str = ""
    fix: str = ""


def finding(id: str, layer: str, severity: str, measured: str, text: str | None = None, **fmt: Any) -> Finding:
    """A Finding with its explanation and fix from TEXTS, {name} placeholders filled from fmt."""
    explanation, fix = TEXTS[text or id]
    for name, value in fmt.items():
        explanation, fix = explanation.replace(f"{{{name}}}", str(value)), fix.replace(f"{{{name}}}", str(value))
    return Finding(id, layer, severity, measured, explanation, fix)


@dataclass
class Upgrade:
    """What came back on the raw socket for the upgrade GET."""

    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    accept_expected: str = ""
    elapsed_ms: float = 0.0
    error: str | None = None  # unreachable | tls | timeout | dropped | bad_response
    detail: str = ""
    body: str = ""

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


@dataclass
class Stream:
    """One response.create over the WebSocket, or one POST with stream:true."""

    transport: str  # websocket | http
    status: int | None = None
    error: str | None = None
    headers_ms: float | None = None
    arrivals_ms: list[float] = field(default_factory=list)
    total_ms: float = 0.0
    terminal: str | None = None
    content_type: str = ""


@dataclass
class Idle:
    """A WebSocket left silent: whether, when and how some layer closed it."""

    seconds: float
    closed_ms: float | None = None
    how: str = "open"  # open | close_frame | eof | reset
    code: int | None = None
    reason: str = ""
    server_pings: int = 0
    ping_ms: list[float] = field(default_factory=list)


# -- pure judgement over measured facts ----------------------------------------------------------------------


def parse_head(raw: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = [(n.strip(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines[1:] if ln)]
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def ping_interval_for(closed_s: float) -> int:
    """A ping interval safely below an idle timeout: half of it, at most 20 s, at least 1 s."""
    return max(1, min(20, int(closed_s / 2)))


def timing(arrivals: list[float], latency_ms: float = 0.0) -> dict[str, Any]:
    """Arrival spread: 'streamed', 'buffered' (all within a few ms after a wait far longer than the connection's
    round trip `latency_ms`) or 'inconclusive'."""
    if len(arrivals) < 3:
        return {"verdict": "inconclusive", "why": "fewer than 3 events"}
    first, last = arrivals[0], arrivals[-1]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    out = {"first_ms": round(first, 1), "last_ms": round(last, 1), "spread_ms": round(last - first, 1),
           "max_gap_ms": round(max(gaps), 1), "bursts": 1 + sum(g > 5 for g in gaps)}
    if last < max(250.0, 3 * latency_ms):
        return {**out, "verdict": "inconclusive", "why": f"the whole response took only {last:.0f} ms"}
    if last - first <= max(15.0, 0.05 * last):
        return {**out, "verdict": "buffered", "why": "every event arrived within a few ms after a long wait"}
    return {**out, "verdict": "streamed", "why": "events arrived spread over the response"}


def judge_upgrade(u: Upgrade, url: str, origin: str) -> list[Finding]:
    if u.error == "unreachable":
        return [finding("unreachable", "network", "error", u.detail)]
    if u.error == "tls":
        cert = "certificate" in u.detail.lower()
        why = (" (the certificate is not trusted: self-signed, private CA, wrong name or an intercepting proxy)"
               if cert else " (does this port speak TLS at all?)")
        return [finding("tls_error", "tls", "error", f"TLS handshake failed: {u.detail}", why=why,
                        tls_fix=CA_FIX if cert else "Use http:// or the port that serves TLS.")]
    if u.error == "timeout":
        return [finding("upgrade_hang", "upgrade", "error", f"no answer within {u.elapsed_ms / 1000:.1f} s "
                        f"({u.detail})")]
    if u.error:
        return [finding("upgrade_dropped", "upgrade", "error", f"{u.error}: {u.detail}")]
    s = u.status or 0
    seen = f"{s} {u.reason}".strip() + f" in {u.elapsed_ms:.0f} ms"
    proxy = ", ".join(f"{n}: {v}" for n, v in u.headers if n.lower() in ("server", "via"))
    up, conn = (u.header("upgrade") or "").lower(), (u.header("connection") or "").lower()
    err = as_json(u.body).get("error") if u.body.startswith("{") else None
    message = err.get("message") if isinstance(err, dict) else None
    body = f": {message or u.body[:120]!r}" if u.body else ""
    if s == 101 and "websocket" in up and "upgrade" in conn:
        if (got := u.header("sec-websocket-accept")) != u.accept_expected:
            return [finding("upgrade_bad_accept", "upgrade", "error",
                            f"101 with Sec-WebSocket-Accept {got!r}, expected {u.accept_expected!r}")]
        return [finding("upgrade_ok", "upgrade", "ok", f"101 with a valid Sec-WebSocket-Accept in "
                        f"{u.elapsed_ms:.0f} ms")]
    if s == 101:
        return [finding("upgrade_stripped", "upgrade", "error", f"101 without `Upgrade: websocket` and `Connection: "
                        f"upgrade` (got Upgrade={up!r}, Connection={conn!r})", hint=" Here a layer rewrote the 101.")]
    if 300 <= s < 400 and u.header("location"):
        return [finding("upgrade_redirect", "upgrade", "error", f"{seen} to {u.header('location')}", url=url)]
    if s == 405 and "POST" in (u.header("allow") or "").upper():
        hint = (f" The answer came through a proxy ({proxy}): if the app does speak WebSocket, that proxy dropped "
                "`Upgrade` and the app saw a plain GET." if proxy else "")
        f = finding("upgrade_no_route", "upgrade", "error", f"{seen}, Allow: {u.header('allow')}", hint=hint,
                    origin=origin)
        f.fix += f"\n# if the app does speak WebSocket, fix the proxy instead, e.g. nginx:\n{NGINX_WS}" if proxy else ""
        return [f]
    if s >= 500:
        return [finding("upgrade_server_error", "upgrade", "error", seen + body)]
    hint = (" A 426 is also what codexbridge_mode=reject answers on purpose (Codex then falls back to HTTP at once)."
            if s == 426 else "")
    return [finding("upgrade_stripped", "upgrade", "error", f"{seen} without a WebSocket upgrade{body}"
                    + (f" [{proxy}]" if proxy else ""), hint=hint)]


def judge_stream(st: Stream, prompt_given: bool, latency_ms: float = 0.0) -> list[Finding]:
    L = st.transport
    where = "response.create over the WebSocket" if L == "websocket" else "POST /responses (stream: true)"
    if not st.arrivals_ms:
        return [finding(f"{L}_failed", L, "error", f"{where}: {st.error or 'no events'}", "failed")]
    if L == "http" and "text/event-stream" not in st.content_type:
        return [finding("http_not_streaming", L, "error", f"{st.status} with Content-Type {st.content_type!r}")]
    t = timing(st.arrivals_ms, latency_ms)
    n, first, last = len(st.arrivals_ms), st.arrivals_ms[0], st.arrivals_ms[-1]
    seen = (f"{n} event{'s' * (n != 1)}, first after {first:.0f} ms, last after {last:.0f} ms "
            f"(spread {last - first:.0f} ms), total {st.total_ms:.0f} ms")
    out: list[Finding] = []
    if st.terminal is None:
        out.append(finding(f"{L}_truncated", L, "error", f"{where}: {n} events, then {st.error or 'EOF'} without "
                           "response.completed", "truncated"))
    elif st.terminal != "response.completed":
        return [finding(f"{L}_response_error", L, "error", f"{where} ended with {st.terminal} "
                        f"{st.error or ''}".strip(), "response_error")]
    if t["verdict"] == "buffered":
        late = st.headers_ms is not None and st.headers_ms >= 0.9 * last
        head = f" Even the response headers were held back ({st.headers_ms:.0f} ms)." if late else ""
        out.append(finding(f"{L}_buffered", L, "warn", seen, head=head))
    elif t["verdict"] == "streamed":
        out.append(finding(f"{L}_streaming", L, "ok", seen + ", arriving incrementally", "streaming"))
    else:
        tip = "" if prompt_given else " Use --prompt with a longer answer to measure it."
        out.append(finding(f"{L}_streaming_unknown", L, "info", seen, "streaming_unknown", why=t["why"], tip=tip))
    return out


def judge_idle(i: Idle) -> list[Finding]:
    pings = (f" The server sent {i.server_pings} Ping(s), the first after {i.ping_ms[0] / 1000:.1f} s."
             if i.server_pings else " The server sent no Pings.")
    if i.how == "open":
        return [finding("idle_ok", "idle", "ok", f"still open after {i.seconds:g} s of silence.{pings}")]
    s = (i.closed_ms or 0) / 1000
    how = (f"close frame {i.code}" + (f" {i.reason!r}" if i.reason else "") if i.how == "close_frame"
           else f"TCP {'EOF' if i.how == 'eof' else 'reset'} without a close frame (1006)")
    return [finding("idle_closed", "idle", "error", f"closed after {s:.1f} s of silence: {how}.{pings}",
                    s=f"{s:.0f}", n=ping_interval_for(s))]


# -- measuring -----------------------------------------------------------------------------------------------


class Target(NamedTuple):
    url: str  # {base}/responses
    host: str
    port: int
    tls: bool
    path: str
    origin: str


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    path, tls = parts.path.rstrip("/") + "/responses", scheme == "https"
    return Target(f"{scheme}://{parts.netloc}{path}", parts.hostname, parts.port or (443 if tls else 80), tls, path,
                  f"{scheme}://{parts.netloc}")


def ssl_context(tls: bool, insecure: bool, ca: str | None) -> ssl.SSLContext | None:
    if not tls:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    if insecure:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def codex_headers(key: str | None) -> dict[str, str]:
    sid = str(uuid.uuid4())
    return {**({"Authorization": f"Bearer {key}"} if key else {}), "User-Agent": f"codexbridge-probe/{__version__}",
            "originator": "codex_exec", "x-client-request-id": sid, "session-id": sid, "thread-id": sid}


async def upgrade(t: Target, key: str | None, timeout: float, ctx: ssl.SSLContext | None) -> tuple[Upgrade, Any]:
    """The upgrade GET on a raw socket: the facts and, after a good 101, (reader, writer, bytes after the head)."""
    wskey = base64.b64encode(secrets.token_bytes(16)).decode()
    u = Upgrade(accept_expected=accept_token(wskey))
    hdrs = {"Host": t.origin.split("://")[1], "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": wskey, **codex_headers(key),
            "openai-beta": "responses_websockets=2026-02-06",
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            t.host, t.port, ssl=ctx, server_hostname=t.host if ctx else None), timeout)
    except ssl.SSLError as e:
        u.error, u.detail = "tls", getattr(e, "verify_message", None) or e.reason or str(e)
        return u, None
    except (OSError, TimeoutError) as e:
        u.error, u.detail = "unreachable", f"cannot connect to {t.host}:{t.port}: {e or type(e).__name__}"
        return u, None
    writer.write(f"GET {t.path} HTTP/1.1\r\n".encode()
                 + b"".join(f"{n}: {v}\r\n".encode() for n, v in hdrs.items()) + b"\r\n")
    buf, rest = b"", b""
    try:
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in buf:
                if not (chunk := await reader.read(65536)):
                    raise EOFError(f"closed without an answer ({len(buf)} bytes)")
                buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        u.status, u.reason, u.headers = parse_head(head)
    except TimeoutError:
        u.error, u.detail = "timeout", f"{len(buf)} bytes received"
    except (EOFError, OSError, ValueError) as e:
        u.error, u.detail = ("bad_response" if isinstance(e, ValueError) else "dropped"), str(e)
    u.elapsed_ms = (time.monotonic() - t0) * 1000
    if u.error is None and u.status == 101:
        return u, (reader, writer, rest)
    u.body = rest.decode("utf-8", "replace")[:300]
    writer.close()
    return u, None


class WsClient:
    """The client side of an upgraded connection, on wsproto (permessage-deflate if the server accepted it)."""

    def __init__(self, u: Upgrade, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]) -> None:
        self.reader, self.writer, rest = conn
        exts: list[Any] = []
        if (offer := u.header("sec-websocket-extensions")) and "permessage-deflate" in offer:
            exts.append(PerMessageDeflate())
            exts[0].finalize(offer)
        self.ws, self.parts = Connection(ConnectionType.CLIENT, exts, rest), list[str]()

    def send(self, event: Any) -> None:
        self.writer.write(self.ws.send(event))

    async def events(self, silence: float) -> AsyncIterator[tuple[str, Any]]:
        """('text', str), ('ping', None), then one of ('close', (code, reason)), ('eof', None), ('reset', None)."""
        data: bytes | None = b""
        while True:
            for ev in self.ws.events():
                if isinstance(ev, Ping):
                    self.send(ev.response())
                    yield "ping", None
                elif isinstance(ev, CloseConnection):  # wsproto reports a bare EOF as a 1006 close
                    yield ("eof", None) if data is None else ("close", (ev.code, ev.reason or ""))
                    return
                elif isinstance(ev, Message):
                    self.parts.append(ev.data if isinstance(ev, TextMessage) else "<binary>")
                    if ev.message_finished:
                        yield "text", "".join(self.parts)
                        self.parts = []
            if data is None:
                yield "eof", None
                return
            try:
                data = await asyncio.wait_for(self.reader.read(65536), silence) or None
            except ConnectionResetError:
                yield "reset", None
                return
            self.ws.receive_data(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed
            self.send(CloseConnection(code=1000))
        self.writer.close()


def as_json(data: str | bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        if isinstance(obj := json.loads(data), dict):
            return obj
    return {}


def create_body(model: str, prompt: str) -> dict[str, Any]:
    text = [{"type": "input_text", "text": prompt}]
    return {"model": model, "store": False, "input": [{"type": "message", "role": "user", "content": text}]}


async def ws_response(ws: WsClient, model: str, prompt: str, timeout: float) -> Stream:
    st, t0 = Stream("websocket", status=101), time.monotonic()
    ws.send(TextMessage(data=json.dumps({"type": "response.create", **create_body(model, prompt)})))
    try:
        async for kind, payload in ws.events(timeout):
            if kind == "text":
                st.arrivals_ms.append((time.monotonic() - t0) * 1000)
                if (ev := as_json(payload)).get("type") in TERMINAL_EVENTS:
                    st.terminal = ev["type"]
                    st.error = json.dumps(ev.get("error"))[:200] if ev["type"] == "error" else None
                    break
            elif kind != "ping":
                st.error = f"{kind} {payload or ''}".strip()
    except TimeoutError:
        st.error = f"no event for {timeout:g} s"
    st.total_ms = (time.monotonic() - t0) * 1000
    return st


async def http_response(t: Target, key: str | None, model: str, prompt: str, timeout: float,
                        verify: ssl.SSLContext | bool) -> Stream:
    st, t0 = Stream("http"), time.monotonic()
    headers = {**codex_headers(key), "Accept": "text/event-stream"}
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout) as client:
            client.headers.pop("accept-encoding", None)  # Codex sends none, and gzip changes what proxies do
            t0 = time.monotonic()
            body = {**create_body(model, prompt), "stream": True}
            async with client.stream("POST", t.url, json=body, headers=headers) as r:
                st.status, st.content_type = r.status_code, r.headers.get("content-type", "")
                st.headers_ms = (time.monotonic() - t0) * 1000
                if r.status_code != 200:
                    st.error = f"HTTP {r.status_code}: {(await r.aread()).decode('utf-8', 'replace')[:200]}"
                    return st
                dec = SseDecoder()
                async for chunk in r.aiter_raw():
                    now = (time.monotonic() - t0) * 1000
                    for ev in dec.feed(chunk):
                        st.arrivals_ms.append(now)
                        if (name := ev.event or as_json(ev.data).get("type", "")) in TERMINAL_EVENTS:
                            st.terminal = name
    except httpx.HTTPError as e:
        st.error = f"{type(e).__name__}: {e}"
    st.total_ms = (time.monotonic() - t0) * 1000
    return st


async def idle(ws: WsClient, seconds: float) -> Idle:
    i, t0 = Idle(seconds), time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            async for kind, payload in ws.events(seconds + 1):
                now = (time.monotonic() - t0) * 1000
                if kind == "ping":
                    i.server_pings += 1
                    i.ping_ms.append(round(now))
                elif kind != "text":
                    i.closed_ms, i.how = now, "close_frame" if kind == "close" else kind
                    i.code, i.reason = payload if kind == "close" else (1006, "")
                    return i
    except TimeoutError:
        pass
    return i


async def probe(url: str, model: str | None = None, key: str | None = None, prompt: str | None = None,
                idle_s: float = 0.0, timeout: float = 10.0, insecure: bool = False, ca: str | None = None
                ) -> dict[str, Any]:
    """Runs every check that applies: {"url", "healthy", "findings", "measurements"}."""
    t = parse_target(url)
    ctx = ssl_context(t.tls, insecure, ca)
    u, conn = await upgrade(t, key, timeout, ctx)
    findings, m = judge_upgrade(u, url, t.origin), {"upgrade": asdict(u)}
    if model and u.error not in ("unreachable", "tls"):
        streams = []
        if conn:
            ws, conn = WsClient(u, conn), None
            streams.append(await ws_response(ws, model, prompt or "Say OK.", timeout))
            ws.close()
        streams.append(await http_response(t, key, model, prompt or "Say OK.", timeout, ctx or True))
        for st in streams:
            findings += judge_stream(st, prompt is not None, u.elapsed_ms)
            m[st.transport] = {**asdict(st), "timing": timing(st.arrivals_ms, u.elapsed_ms)}
    if conn:
        WsClient(u, conn).close()
    if idle_s > 0:
        if findings[0].id == "upgrade_ok" and (again := await upgrade(t, key, timeout, ctx))[1]:
            ws = WsClient(again[0], again[1])
            i = await idle(ws, idle_s)
            ws.close()
            findings += judge_idle(i)
            m["idle"] = asdict(i)
        else:
            findings.append(finding("idle_skipped", "idle", "info", "no WebSocket to leave idle"))
    healthy = not any(f.severity in ("warn", "error") for f in findings)
    return {"url": url, "healthy": healthy, "findings": [asdict(f) for f in findings], "measurements": m}


# -- output --------------------------------------------------------------------------------------------------

MARK = {"ok": "[green]✔[/green]", "info": "[blue]i[/blue]", "warn": "[yellow]![/yellow]", "error": "[red]✖[/red]"}


def render(report: dict[str, Any], console: Console) -> None:
    verdict = "[green]healthy[/green]" if report["healthy"] else "[red]problems found[/red]"
    console.print(f"codexbridge probe [bold]{escape(report['url'])}[/bold]: {verdict}")
    table = Table(header_style="bold")
    for col in ("", "layer", "finding", "measured"):
        table.add_column(col, overflow="fold")
    for f in report["findings"]:
        table.add_row(MARK[f["severity"]], f["layer"], f["id"], escape(f["measured"]))
    console.print(table)
    for f in report["findings"]:
        if f["severity"] != "ok" and (f["explanation"] or f["fix"]):
            fix = f"\n\n[bold]fix[/bold]\n{escape(f['fix'])}" if f["fix"] else ""
            colour = {"error": "red", "warn": "yellow"}.get(f["severity"], "blue")
            console.print(Panel(escape(f["explanation"]) + fix, title=f"{f['id']} ({f['layer']})",
                                title_align="left", border_style=colour))


def main(args: Any) -> int:
    """The `probe` subcommand: 0 healthy, 1 a problem found, 2 a usage error or nothing reachable."""
    console = Console()
    key = os.environ.get(args.key_env) if args.key_env else None
    try:
        ssl_context(parse_target(args.url).tls, args.insecure, args.ca)
        if args.model and not key:
            raise ValueError(f"--model needs an API key in ${args.key_env}")
    except (ValueError, OSError) as e:
        console.print(f"[red]usage: {escape(str(e))}[/red]")
        return 2
    report = asyncio.run(probe(args.url, args.model, key, args.prompt, args.idle or 0.0, args.timeout,
                               args.insecure, args.ca))
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        render(report, console)
    if any(f["id"] == "unreachable" for f in report["findings"]):
        return 2
    return 0 if report["healthy"] else 1
