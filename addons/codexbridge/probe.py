"""`codexbridge probe URL`: check a Responses endpoint the way Codex uses it and explain each layer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import ssl
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from . import __version__
from .sse import SseDecoder

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})
BAD = ("warn", "error")
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
}"""
CLOUDFLARE = ("Behind a Cloudflare Worker, pass the request on unchanged (`return fetch(request)`): rebuilding it "
              "from selected headers drops `Upgrade`; WebSockets must also be enabled for the zone.")
BRIDGE = ("codexbridge run --upstream {origin}\n# or: mitmdump -s addons/bridge.py --mode reverse:{origin} "
          "--set connection_strategy=lazy --set codexbridge_mode=bridge\n"
          "# stop only the 405 storm (Codex falls back to HTTP at once): --set codexbridge_mode=reject")
BUFFER_FIX = ("location /v1/ {\n    proxy_http_version 1.1;   # HTTP/1.0 upstream bodies are held until the end\n"
              "    proxy_buffering off;\n    gzip off;\n}\n# or let the app send the response header  X-Accel-Buffering: no\n"
              "# codexbridge streams every text/event-stream itself (codexbridge_stream_sse=true, the default)")


@dataclass
class Finding:
    """One conclusion: what was measured at which layer, what it means, and how to fix it."""

    id: str
    layer: str  # upgrade | websocket | http | idle | tls | network
    severity: str  # ok | info | warn | error
    measured: str
    explanation: str = ""
    fix: str = ""


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
    """One response.create over the WebSocket or one POST with stream:true."""

    transport: str
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


# -- pure judgement over measured facts ----------------------------------------------------------------


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


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
    """Spread of event arrival times: 'streamed', 'buffered' (all at once after a long wait, compared with the
    connection's own round trip `latency_ms`) or 'inconclusive'."""
    if len(arrivals) < 3:
        return {"verdict": "inconclusive", "why": "fewer than 3 events"}
    first, last = arrivals[0], arrivals[-1]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    out = {"first_ms": round(first, 1), "last_ms": round(last, 1), "spread_ms": round(last - first, 1),
           "max_gap_ms": round(max(gaps), 1), "bursts": 1 + sum(g > 5 for g in gaps)}
    if last < max(250.0, 3 * latency_ms):
        return {**out, "verdict": "inconclusive", "why": f"the whole response took only {last:.0f} ms"}
    if last - first <= max(15.0, 0.05 * last):
        return {**out, "verdict": "buffered", "why": "every event arrived within a few ms after a long wait"}
    return {**out, "verdict": "streamed", "why": "events arrived spread over the response"}


def judge_upgrade(u: Upgrade, url: str, origin: str) -> list[Finding]:
    L, s = "upgrade", u.status
    if u.error == "unreachable":
        return [Finding("unreachable", "network", "error", f"cannot connect: {u.detail}",
                        "Nothing answered at that host and port.", "Check the URL, the port and any firewall.")]
    if u.error == "tls":
        return [Finding("tls_error", "tls", "error", f"TLS handshake failed: {u.detail}",
                        "The certificate is not trusted (self-signed, private CA, wrong host name, or a TLS-"
                        "intercepting proxy). Codex fails the same way.",
                        "Trust the CA: codexbridge probe URL --ca ca.pem; for Codex set SSL_CERT_FILE=ca.pem or "
                        "CODEX_CA_CERTIFICATE=ca.pem. --insecure skips verification for this probe only.")]
    if u.error == "timeout":
        return [Finding("upgrade_hang", L, "error", f"no answer to the upgrade within {u.elapsed_ms / 1000:.1f} s",
                        "A layer swallowed the upgrade: it accepted the request but never answered (typical of a "
                        "proxy that drops `Upgrade` and then waits on an upstream that waits for a body). Codex "
                        "hangs until its own timeout.", f"nginx:\n{NGINX_WS}\n# {CLOUDFLARE}")]
    if u.error:
        return [Finding("upgrade_dropped", L, "error", f"{u.error}: {u.detail}",
                        "The connection closed or answered garbage instead of an HTTP response to the upgrade.",
                        f"Check every proxy between Codex and the app; nginx needs:\n{NGINX_WS}")]
    assert s is not None
    seen = f"{s} {u.reason}".strip() + f" in {u.elapsed_ms:.0f} ms"
    proxy = " ".join(f"{n}: {v}" for n, v in u.headers if n.lower() in ("server", "via"))
    upgrade, conn = (u.header("upgrade") or "").lower(), (u.header("connection") or "").lower()
    if s == 101 and "websocket" in upgrade and "upgrade" in conn:
        got = u.header("sec-websocket-accept")
        if got != u.accept_expected:
            return [Finding("upgrade_bad_accept", L, "error", f"101, Sec-WebSocket-Accept {got!r}, expected "
                            f"{u.accept_expected!r}", "The 101 does not answer this request's key: a layer "
                            "forged or replayed the handshake. Codex rejects it.", "Find the layer that answers "
                            "the upgrade itself (a cache or a misconfigured WebSocket gateway).")]
        return [Finding("upgrade_ok", L, "ok", f"101 with a valid Sec-WebSocket-Accept in {u.elapsed_ms:.0f} ms")]
    if s == 101:
        return [Finding("upgrade_stripped", L, "error", f"101 without `Upgrade: websocket`/`Connection: upgrade` "
                        f"(Upgrade={upgrade!r}, Connection={conn!r})", "A layer rewrote the hop-by-hop headers "
                        "of the 101; Codex rejects the handshake.", f"nginx:\n{NGINX_WS}\n# {CLOUDFLARE}")]
    if 300 <= s < 400 and u.header("location"):
        return [Finding("upgrade_redirect", L, "error", f"{seen} to {u.header('location')}",
                        "Codex's WebSocket client does not follow redirects; the upgrade fails and Codex falls "
                        "back to HTTP (where a 301/302 turns the POST into a GET).",
                        f"Use the final address as base_url (its …/v1 part), not {url}.")]
    if s == 405 and "POST" in (u.header("allow") or "").upper():
        hint = (f" The answer came through a proxy ({proxy}): if the app does speak WebSocket, that proxy "
                "dropped `Upgrade` and the app saw a plain GET." if proxy else "")
        return [Finding("upgrade_no_route", L, "error", f"{seen}, Allow: {u.header('allow')}",
                        "The app has no WebSocket route, only POST /responses. Every Codex session retries the "
                        "upgrade about 7 times (a 5-20 s stall, the '405 storm') and then falls back to HTTP."
                        + hint, BRIDGE.format(origin=origin))]
    if s >= 500:
        return [Finding("upgrade_server_error", L, "error", seen + (f": {u.body[:120]}" if u.body else ""),
                        "The server failed the upgrade; Codex retries and then falls back to HTTP.",
                        "Look at the server's (or the proxy's upstream) logs for this request.")]
    what = ("codexbridge_mode=reject answers 426 on purpose: Codex then falls back to HTTP after one attempt. "
            if s == 426 else "")
    return [Finding("upgrade_stripped", L, "error", seen + " without a WebSocket upgrade"
                    + (f": {u.body[:120]}" if u.body else "") + (f" [{proxy}]" if proxy else ""),
                    "A layer stripped or refused the upgrade: the app did not see `Upgrade: websocket` with "
                    "`Connection: upgrade` (nginx forwards neither unless told to), or a gateway refuses "
                    "WebSockets. " + what + "Codex retries and then falls back to HTTP for the session.",
                    f"nginx:\n{NGINX_WS}\n# {CLOUDFLARE}")]


def judge_stream(st: Stream, prompt_given: bool, latency_ms: float = 0.0) -> list[Finding]:
    L = st.transport
    where = "response.create over the WebSocket" if L == "websocket" else "POST /responses (stream: true)"
    if st.error and not st.arrivals_ms:
        return [Finding(f"{L}_failed", L, "error", f"{where}: {st.error}", "The request did not produce any event.",
                        "Check the model name, the API key and the gateway's logs.")]
    if L == "http" and st.status == 200 and "text/event-stream" not in st.content_type:
        return [Finding("http_not_streaming", L, "error", f"200 with Content-Type {st.content_type!r}",
                        "The answer to stream:true is not an SSE stream; Codex cannot read it.",
                        "Make the gateway pass `stream: true` through and answer text/event-stream.")]
    t = timing(st.arrivals_ms, latency_ms)
    n, last = len(st.arrivals_ms), st.arrivals_ms[-1] if st.arrivals_ms else 0.0
    seen = (f"{n} events, first after {t.get('first_ms', st.arrivals_ms[0] if n else 0):.0f} ms, last after "
            f"{last:.0f} ms (spread {t.get('spread_ms', 0):.0f} ms), total {st.total_ms:.0f} ms")
    out: list[Finding] = []
    if st.terminal not in ("response.completed", None):
        out.append(Finding(f"{L}_response_error", L, "error", f"{where} ended with {st.terminal}: {st.error or ''}",
                           "The endpoint answered, but not with a completed response.",
                           "Check the model name, the API key and the error text above."))
    elif st.terminal is None:
        out.append(Finding(f"{L}_truncated", L, "error", f"{where}: stream ended after {n} events without "
                           f"response.completed ({st.error or 'EOF'})", "Some layer cut the stream; Codex reports 'stream disconnected "
                           "before completion' and retries.", "Raise the proxy's read/idle timeouts."))
    if t["verdict"] == "buffered":
        head = (f"; the response headers also arrived only after {st.headers_ms:.0f} ms"
                if st.headers_ms and st.headers_ms >= 0.9 * last else "")
        out.append(Finding(f"{L}_buffered", L, "warn", seen + head, "A layer buffers the stream: the events "
                           "were produced over time but delivered all at once at the end, so Codex shows nothing "
                           "until the answer is complete and long turns hit idle timeouts.",
                           BUFFER_FIX if L == "http" else "Find the layer that holds WebSocket frames back "
                           "(a WebSocket-unaware proxy or an inspection gateway)."))
    elif t["verdict"] == "streamed":
        out.append(Finding(f"{L}_streaming", L, "ok", seen + ", arriving incrementally"))
    else:
        tip = "" if prompt_given else " Try --prompt '…a longer answer…' to measure it."
        out.append(Finding(f"{L}_streaming_unknown", L, "info", seen, f"Cannot tell streaming from buffering: "
                           f"{t['why']}.{tip}"))
    return out


def judge_idle(i: Idle) -> list[Finding]:
    pings = (f" The server sent {i.server_pings} Ping(s) (first after {i.ping_ms[0] / 1000:.1f} s)."
             if i.server_pings else " The server sent no Pings.")
    if i.how == "open":
        return [Finding("idle_ok", "idle", "ok", f"still open after {i.seconds:g} s of silence.{pings}",
                        "No layer closed the idle WebSocket within that time (nginx's default "
                        "proxy_read_timeout is 60 s, Cloudflare's idle limit about 100 s: use --idle 120 to "
                        "cover them).")]
    s = (i.closed_ms or 0) / 1000
    how = (f"close frame {i.code}" + (f" {i.reason!r}" if i.reason else "") if i.how == "close_frame"
           else f"TCP {'EOF' if i.how == 'eof' else 'reset'} without a close frame (1006)")
    n = ping_interval_for(s)
    return [Finding("idle_closed", "idle", "error", f"closed after {s:.1f} s of silence: {how}.{pings}",
                    f"Some layer has an idle timeout of about {s:.0f} s. A Codex turn that is silent that long "
                    "(a slow tool call, long reasoning) dies with 'websocket closed by server before "
                    "response.completed'.",
                    f"codexbridge run --upstream … --set codexbridge_ping_interval={n}\n"
                    "# Pings from codexbridge keep every layer between Codex and it busy; or raise the timeout:\n"
                    "proxy_read_timeout 3600s;  proxy_send_timeout 3600s;   # nginx")]


# -- measuring ------------------------------------------------------------------------------------------


@dataclass
class Target:
    url: str
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
    tls = scheme == "https"
    port = parts.port or (443 if tls else 80)
    return Target(f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/responses", parts.hostname, port, tls,
                  parts.path.rstrip("/") + "/responses", f"{scheme}://{parts.netloc}")


def codex_headers(key: str | None) -> dict[str, str]:
    sid = str(uuid.uuid4())
    return {**({"Authorization": f"Bearer {key}"} if key else {}), "User-Agent": f"codexbridge-probe/{__version__}",
            "originator": "codex_exec", "x-client-request-id": sid, "session-id": sid, "thread-id": sid}


async def upgrade(t: Target, key: str | None, timeout: float, ctx: ssl.SSLContext | None
                  ) -> tuple[Upgrade, Any]:
    """The upgrade GET on a raw socket; returns the facts and, after a good 101, (reader, writer, leftover)."""
    wskey = base64.b64encode(secrets.token_bytes(16)).decode()
    u = Upgrade(accept_expected=accept_for(wskey))
    hdrs = {"Host": t.origin.split("://")[1], "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": wskey, **codex_headers(key),
            "openai-beta": "responses_websockets=2026-02-06",
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            t.host, t.port, ssl=ctx, server_hostname=t.host if ctx else None), timeout)
    except ssl.SSLError as e:
        u.error, u.detail = "tls", getattr(e, "verify_message", None) or str(e)
        return u, None
    except (OSError, TimeoutError) as e:
        u.error, u.detail = "unreachable", str(e) or type(e).__name__
        return u, None
    writer.write(f"GET {t.path} HTTP/1.1\r\n".encode() + b"".join(
        f"{n}: {v}\r\n".encode() for n, v in hdrs.items()) + b"\r\n")
    buf = b""
    try:
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in buf:
                if not (chunk := await reader.read(65536)):
                    raise EOFError("closed before a response" + (f" ({len(buf)} bytes)" if buf else ""))
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
    if u.error is None:
        u.body = rest.decode("utf-8", "replace")[:300]
    writer.close()
    return u, None


class WsClient:
    """The client side of an upgraded connection, on wsproto."""

    def __init__(self, u: Upgrade, conn: Any) -> None:
        from wsproto import ConnectionType
        from wsproto.connection import Connection
        from wsproto.extensions import PerMessageDeflate

        self.reader, self.writer, rest = conn
        exts: list[Any] = []
        if (offer := u.header("sec-websocket-extensions")) and "permessage-deflate" in offer:
            ext = PerMessageDeflate()
            ext.finalize(offer)
            exts.append(ext)
        self.ws = Connection(ConnectionType.CLIENT, exts, rest)
        self.parts: list[str] = []

    def send(self, event: Any) -> None:
        self.writer.write(self.ws.send(event))

    async def events(self, silence: float) -> Any:
        """Yields (kind, payload): ('text', str), ('ping', None), ('close', (code, reason)), ('eof'|'reset', None)."""
        from wsproto.events import CloseConnection, Message, Ping, TextMessage

        data: bytes | None = b""
        while True:
            for ev in self.ws.events():
                if isinstance(ev, Ping):
                    self.send(ev.response())
                    yield "ping", None
                elif isinstance(ev, CloseConnection):
                    yield "close", (ev.code, ev.reason or "")
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
        from wsproto.events import CloseConnection

        try:
            self.send(CloseConnection(code=1000))
        except Exception:
            pass
        self.writer.close()


def as_json(data: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def create_body(model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "store": False, "input": [{"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": prompt}]}]}


async def ws_response(ws: WsClient, model: str, prompt: str, timeout: float) -> Stream:
    from wsproto.events import TextMessage

    st = Stream("websocket", status=101)
    ws.send(TextMessage(data=json.dumps({"type": "response.create", **create_body(model, prompt)})))
    t0 = time.monotonic()
    try:
        async for kind, payload in ws.events(timeout):
            if kind == "text":
                st.arrivals_ms.append((time.monotonic() - t0) * 1000)
                ev = as_json(payload)
                if ev.get("type") in TERMINAL:
                    st.terminal = ev["type"]
                    if ev["type"] == "error":
                        st.error = json.dumps(ev.get("error", ev))[:200]
                    break
            elif kind != "ping":
                st.error = f"connection ended: {kind} {payload or ''}".strip()
                break
    except TimeoutError:
        st.error = f"no event for {timeout:g} s"
    st.total_ms = (time.monotonic() - t0) * 1000
    return st


async def http_response(t: Target, key: str | None, model: str, prompt: str, timeout: float,
                        verify: ssl.SSLContext | bool) -> Stream:
    import httpx

    st, t0 = Stream("http"), time.monotonic()
    headers = {**codex_headers(key), "Accept": "text/event-stream"}
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout) as client:
            client.headers.pop("accept-encoding", None)  # Codex sends none, and gzip changes what proxies do
            t0 = time.monotonic()
            async with client.stream("POST", t.url, json={**create_body(model, prompt), "stream": True},
                                     headers=headers) as r:
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
                        name = ev.event or as_json(ev.data).get("type", "")
                        if name in TERMINAL:
                            st.terminal = name
    except httpx.HTTPError as e:
        st.error = f"{type(e).__name__}: {e}"
    st.total_ms = (time.monotonic() - t0) * 1000 if st.status else 0.0
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
                elif kind in ("close", "eof", "reset"):
                    i.closed_ms, i.how = now, {"close": "close_frame"}.get(kind, kind)
                    i.code, i.reason = payload if kind == "close" else (1006, "")
                    return i
    except TimeoutError:
        pass
    return i


def ssl_context(tls: bool, insecure: bool, ca: str | None) -> ssl.SSLContext | None:
    if not tls:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    if insecure:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def probe(url: str, model: str | None = None, key: str | None = None, prompt: str | None = None,
                idle_s: float = 0.0, timeout: float = 10.0, insecure: bool = False, ca: str | None = None
                ) -> dict[str, Any]:
    """Runs every check that applies and returns {"url", "healthy", "findings", "measurements"}."""
    t = parse_target(url)
    ctx = ssl_context(t.tls, insecure, ca)
    u, conn = await upgrade(t, key, timeout, ctx)
    findings = judge_upgrade(u, url, t.origin)
    m: dict[str, Any] = {"upgrade": asdict(u)}
    if model and u.error not in ("unreachable", "tls"):
        if conn:
            ws = WsClient(u, conn)
            st = await ws_response(ws, model, prompt or "Say OK.", timeout)
            ws.close()
            findings += judge_stream(st, prompt is not None, u.elapsed_ms)
            m["websocket"] = {**asdict(st), "timing": timing(st.arrivals_ms, u.elapsed_ms)}
            conn = None
        st = await http_response(t, key, model, prompt or "Say OK.", timeout, ctx or True)
        findings += judge_stream(st, prompt is not None, u.elapsed_ms)
        m["http"] = {**asdict(st), "timing": timing(st.arrivals_ms, u.elapsed_ms)}
    if conn:
        WsClient(u, conn).close()
    if idle_s > 0:
        if findings[0].id == "upgrade_ok" and (got := await upgrade(t, key, timeout, ctx))[1]:
            ws = WsClient(got[0], got[1])
            i = await idle(ws, idle_s)
            ws.close()
            findings += judge_idle(i)
            m["idle"] = asdict(i)
        else:
            findings.append(Finding("idle_skipped", "idle", "info", "no WebSocket to leave idle",
                                    "The idle check needs a successful upgrade."))
    healthy = not any(f.severity in BAD for f in findings)
    return {"url": url, "healthy": healthy, "findings": [asdict(f) for f in findings], "measurements": m}


# -- output ---------------------------------------------------------------------------------------------

MARK = {"ok": "[green]✔[/green]", "info": "[blue]i[/blue]", "warn": "[yellow]![/yellow]", "error": "[red]✖[/red]"}


def render(report: dict[str, Any], console: Console) -> None:
    verdict = "[green]healthy[/green]" if report["healthy"] else "[red]problems found[/red]"
    console.print(f"codexbridge probe [bold]{escape(report['url'])}[/bold]: {verdict}")
    table = Table(show_header=True, header_style="bold", expand=False)
    for col in ("", "layer", "finding", "measured"):
        table.add_column(col, overflow="fold")
    for f in report["findings"]:
        table.add_row(MARK[f["severity"]], f["layer"], f["id"], escape(f["measured"]))
    console.print(table)
    for f in report["findings"]:
        if f["severity"] == "ok" or not (f["explanation"] or f["fix"]):
            continue
        body = escape(f["explanation"]) + (f"\n\n[bold]fix[/bold]\n{escape(f['fix'])}" if f["fix"] else "")
        colour = {"error": "red", "warn": "yellow"}.get(f["severity"], "blue")
        console.print(Panel(body, title=f"{f['id']} ({f['layer']})", title_align="left", border_style=colour))


def main(args: Any) -> int:
    """The `probe` subcommand: 0 healthy, 1 a problem found, 2 usage error or unreachable."""
    console = Console()
    key = os.environ.get(args.key_env) if args.key_env else None
    if args.model and not key:
        console.print(f"[red]--model needs an API key in ${args.key_env}[/red]")
        return 2
    try:
        report = asyncio.run(probe(args.url, args.model, key, args.prompt, args.idle or 0.0, args.timeout,
                                   args.insecure, args.ca))
    except (ValueError, OSError) as e:
        console.print(f"[red]usage: {escape(str(e))}[/red]")
        return 2
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        render(report, console)
    if any(f["id"] == "unreachable" for f in report["findings"]):
        return 2
    return 0 if report["healthy"] else 1
