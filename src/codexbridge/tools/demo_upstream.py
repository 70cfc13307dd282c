"""Loopback HTTP/1.1 mock of an OpenAI Responses API gateway: POST + SSE, optionally WebSocket mode and TLS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import itertools
import json
import logging
import re
import secrets
import signal
import ssl
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

import h11
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Event, Message, Ping, Pong, TextMessage
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WsHandshakeError

from codexbridge.responses.conversation import WS_ONLY_KEYS
from codexbridge.responses.events import user_message
from codexbridge.responses.metadata import is_codex_client
from codexbridge.responses.synthetic import response_object
from codexbridge.responses.synthetic import usage as api_usage

log = logging.getLogger("codexbridge.tools.demo_upstream")

DEFAULT_TEXT = "hi from mock"
DIRECTIVE = re.compile(r"\[\[([a-z_]+)(?::(.*?))?\]\]", re.DOTALL)
_NUMERIC = ("error", "retry_after", "fail_times", "sleep", "delay_headers", "pace_ms", "deltas", "chunk")
_FLAGS = ("truncate", "reset", "crlf", "comments", "done")
_ENDS = ("failed", "incomplete", "sse_error")
_ERRORS = {429: ("rate_limit_exceeded", "rate_limit_exceeded"), 400: ("invalid_request_error", "invalid_request_error"),
           401: ("invalid_request_error", "invalid_api_key")}
_STATUS_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}
# Directives that choose answer headers, as a gateway or OpenAI sets them. They hold for every request of the turn
# (the tool follow-up too), as a server's routing and quota do. Over HTTP they are headers of the POST answer; a
# native WebSocket server sends them as events (`response.metadata`, `codex.rate_limits`) before the response.
_HEADER_DIRECTIVES = {"turn_state": "x-codex-turn-state", "model": "openai-model", "models_etag": "x-models-etag"}
QUOTA_HEADERS = (
    ("x-codex-primary-used-percent", "12.5"), ("x-codex-primary-window-minutes", "300"),
    ("x-codex-primary-reset-at", "1900000000"), ("x-codex-secondary-used-percent", "40"),
    ("x-codex-secondary-window-minutes", "10080"), ("x-codex-secondary-reset-at", "1900500000"),
    ("x-codex-credits-has-credits", "true"), ("x-codex-credits-unlimited", "false"), ("x-codex-credits-balance", "9.5"),
)
# The same quota written the way a native WebSocket server states it (Codex reads it with parse_rate_limit_event).
QUOTA_EVENT = {"type": "codex.rate_limits", "metered_limit_name": "codex",
               "rate_limits": {"primary": {"used_percent": 12.5, "window_minutes": 300, "reset_at": 1900000000},
                               "secondary": {"used_percent": 40.0, "window_minutes": 10080, "reset_at": 1900500000}},
               "credits": {"has_credits": True, "unlimited": False, "balance": "9.5"}}
OTHER_QUOTA_HEADERS = (("x-codex-other-primary-used-percent", "55"), ("x-codex-other-primary-window-minutes", "60"),
                       ("x-codex-other-primary-reset-at", "1900001000"))
OTHER_QUOTA_EVENT = {"type": "codex.rate_limits", "metered_limit_name": "codex_other",
                     "rate_limits": {"primary": {"used_percent": 55.0, "window_minutes": 60, "reset_at": 1900001000}},
                     "credits": {"has_credits": True, "unlimited": False, "balance": "9.5"}}
Headers = Sequence[tuple[str, str]]
Events = Iterator["dict[str, Any] | float | None"]


@dataclass
class Plan:
    """What to answer to one response request (POST body or full WebSocket input), derived by plan_for()."""

    text: str = DEFAULT_TEXT
    deltas: list[str] = field(default_factory=lambda: [DEFAULT_TEXT])
    tool_call: bool = False
    error: int | None = None
    retry_after: float | None = None  # a Retry-After header (seconds) on the error answer
    fail_times: int | None = None  # the failure directives hold for this many requests of the prompt, then not
    prompt: str = ""  # the last user message's text (what fail_times counts by)
    sleep: float = 0.0
    delay_headers: float = 0.0
    pace: float = 0.0
    chunk: int = 0
    end: str = "completed"  # or one of _ENDS
    truncate: bool = False  # the body ends cleanly after the first delta, with no terminal event
    reset: bool = False  # the connection drops there instead (no end of the chunked body; natively no close frame)
    crlf: bool = False
    comments: bool = False
    done: bool = False
    generate: bool = True  # False: WebSocket prewarm, response.created + response.completed only
    compaction: bool = False  # answer a `compaction_trigger` with one `compaction` item, as remote compaction expects
    headers: list[tuple[str, str]] = field(default_factory=list)  # answer headers chosen by directives (HTTP)
    ws_events: list[dict[str, Any]] = field(default_factory=list)  # the same, as a native WebSocket server sends them


def _text_of(content: Any, kinds: tuple[str, ...]) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(p["text"] for p in parts
                   if isinstance(p, dict) and p.get("type") in kinds and isinstance(p.get("text"), str))


def answer_headers(plan: Plan, directives: list[tuple[str, str]]) -> None:
    """Fills the plan's answer headers and their native WebSocket events from the header directives."""
    names = {name for name, _ in directives}
    meta: dict[str, str] = {}
    for name, arg in directives:
        if name in _HEADER_DIRECTIVES:
            plan.headers.append((_HEADER_DIRECTIVES[name], arg))
            if name != "models_etag":  # Codex reads x-models-etag over WebSocket only from the 101
                meta[_HEADER_DIRECTIVES[name]] = arg
        elif name == "reasoning_included":
            plan.headers.append(("x-reasoning-included", "true"))  # over WebSocket: the 101 (--upgrade-header)
    if meta:
        plan.ws_events.append({"type": "response.metadata", "headers": meta})
    # Quota state goes with every answer: over HTTP as headers (none: Codex reads an empty `codex` snapshot),
    # natively as codex.rate_limits events (an empty one says the same).
    if "quota" in names:
        plan.headers.extend(QUOTA_HEADERS)
    plan.ws_events.append(QUOTA_EVENT if "quota" in names else {"type": "codex.rate_limits"})
    if "quota_other" in names:
        plan.headers.extend(OTHER_QUOTA_HEADERS)
        plan.ws_events.append(OTHER_QUOTA_EVENT)


def plan_for(body: Any) -> Plan:
    """Choose the behaviour for one request body: tool output echo, compaction, directives, `run echo` tool call,
    or text. Header directives of the last user message hold for every request of its turn."""
    plan = Plan()
    items = body.get("input") if isinstance(body, dict) else None
    if isinstance(items, str):  # the API's shorthand for one user message
        items = [user_message(items)]
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    user: dict[str, Any] = next((i for i in reversed(items) if i.get("role") == "user" and i.get("type", "message") == "message"), {})
    raw = _text_of(user.get("content"), ("input_text",))
    answer_headers(plan, DIRECTIVE.findall(raw))
    if items and items[-1].get("type") == "function_call_output":
        output = _text_of(items[-1].get("output"), ("input_text", "output_text"))
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        plan.text = f"tool said: {lines[-1] if lines else ''}"
        plan.deltas = [plan.text]
        return plan
    if items and items[-1].get("type") == "compaction_trigger":
        plan.compaction = True
        plan.text = f"compacted {len(items) - 1} items: {DEFAULT_TEXT}"
        return plan
    reply: str | None = None
    num: dict[str, float] = {}
    for name, arg in DIRECTIVE.findall(raw):
        if name in _NUMERIC:
            with contextlib.suppress(ValueError):
                num[name] = max(0.0, float(arg))
        elif name == "reply":
            reply = arg
        elif name in _ENDS:
            plan.end = name
        elif name in _FLAGS:
            setattr(plan, name, True)
    plan.error = int(num["error"]) if "error" in num else None
    plan.retry_after = num.get("retry_after")
    plan.fail_times, plan.prompt = (int(num["fail_times"]) if "fail_times" in num else None), raw
    plan.sleep, plan.delay_headers = num.get("sleep", 0.0), num.get("delay_headers", 0.0)
    plan.pace = num.get("pace_ms", 0.0) / 1000
    plan.chunk = max(1, int(num["chunk"])) if "chunk" in num else 0
    plan.tool_call = "run echo" in DIRECTIVE.sub("", raw)
    plan.text = DEFAULT_TEXT if reply is None else reply
    plan.deltas = [plan.text]
    if (n := min(int(num.get("deltas", 0)), 100_000)) > 0:
        words = [] if reply is None else reply.split()
        words += [f"word{i}" for i in range(len(words) + 1, n + 1)]
        plan.deltas = [w + " " for w in words[:n - 1]] + [" ".join(words[n - 1:])]
        plan.text = "".join(plan.deltas)
    return plan


def healed(plan: Plan) -> Plan:
    """The plan without its failure directives (error, truncate, reset, sleep, failed/incomplete/sse_error)."""
    return replace(plan, error=None, truncate=False, reset=False, sleep=0.0,
                   end="completed" if plan.end in _ENDS else plan.end)


def events_for(plan: Plan, n: int, model: str, in_tokens: int, body: dict[str, Any] | None = None) -> Events:
    """Transport-neutral events of response n: event objects in order, a float is a pause in seconds, and
    None means "cut the stream here" (a truncating plan, after the first delta, with no terminal event).
    Every event is complete as the API's own (the request's settings in `body` echoed)."""
    created, seq = int(time.time()), itertools.count()
    settings = {**(body or {}), "model": model}

    def ev(type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "sequence_number": next(seq), **fields}

    def resp(status: str, output: list[Any], **extra: Any) -> dict[str, Any]:
        return {**response_object(settings, f"resp_mock_{n}", status, created_at=created, output=output), **extra}

    def usage(out_tokens: int) -> dict[str, Any]:
        return api_usage(in_tokens, out_tokens)

    yield ev("response.created", response=resp("in_progress", []))
    if not plan.generate:
        yield ev("response.completed", response=resp("completed", [], usage=usage(0)))
        return
    if plan.end == "sse_error":
        yield ev("error", code="server_error", message="mock stream error")
        return
    yield ev("response.in_progress", response=resp("in_progress", []))
    if plan.sleep:
        yield plan.sleep
    if plan.compaction:
        item: dict[str, Any] = {"type": "compaction", "id": f"cmp_{secrets.token_hex(6)}", "encrypted_content": plan.text}
        yield ev("response.output_item.added", output_index=0, item=item)
        out_tokens = 1
    elif plan.tool_call:
        fid, args = f"fc_{secrets.token_hex(6)}", json.dumps({"cmd": "echo hello-from-tool"})
        item = {"type": "function_call", "id": fid, "call_id": f"call_{secrets.token_hex(4)}",
                                "name": "exec_command", "arguments": args, "status": "completed"}
        yield ev("response.output_item.added", output_index=0, item={**item, "arguments": "", "status": "in_progress"})
        yield ev("response.function_call_arguments.delta", item_id=fid, output_index=0, delta=args)
        if plan.pace:  # the call stays open that long
            yield plan.pace
        if plan.truncate or plan.reset:
            yield None
            return
        yield ev("response.function_call_arguments.done", item_id=fid, output_index=0, arguments=args)
        out_tokens = 1
    else:
        mid = f"msg_{secrets.token_hex(6)}"
        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        item = {"id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        yield ev("response.output_item.added", output_index=0, item=item)
        part = {"type": "output_text", "annotations": [], "text": ""}
        yield ev("response.content_part.added", **where, part=part)
        for i, delta in enumerate(plan.deltas):
            if i and plan.pace:
                yield plan.pace
            yield ev("response.output_text.delta", **where, delta=delta, logprobs=[])
            if plan.truncate or plan.reset:
                yield None
                return
        part = {**part, "text": plan.text}
        yield ev("response.output_text.done", **where, text=plan.text, logprobs=[])
        yield ev("response.content_part.done", **where, part=part)
        item = {**item, "status": "completed", "content": [part]}
        out_tokens = len(plan.deltas)
    yield ev("response.output_item.done", output_index=0, item=item)
    if plan.end == "failed":
        extra: dict[str, Any] = {"error": {"code": "server_error", "message": "mock failure"}}
    elif plan.end == "incomplete":
        extra = {"incomplete_details": {"reason": "max_output_tokens"}}
    else:
        extra = {}
    status = plan.end if plan.end in ("failed", "incomplete") else "completed"
    yield ev(f"response.{status}", response=resp(status, [item], **extra, usage=usage(out_tokens)))


_COUNTED = frozenset({"text", "output", "arguments", "encrypted_content"})


def input_tokens(items: Any) -> int:
    """Usage the mock reports for a request: its texts and items, the same for the same conversation over HTTP
    and over WebSocket, whatever ids and timestamps the client put around them."""
    count, stack = 0, [items]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            count += 16
            stack.extend(v for k, v in value.items() if k in _COUNTED or isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            count += len(value)
    return count // 4


def planned_error(error: int, rid: Headers, retry_after: float | None = None) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    """Status, JSON body and extra headers of an `[[error:CODE]]` answer (`rid`: the request id and answer headers;
    `retry_after`: a Retry-After of that many seconds, as `[[retry_after:N]]` asks; a 429 always has one)."""
    code = error if 200 <= error <= 599 else 500
    etype, ecode = _ERRORS.get(code, ("server_error", "server_error"))
    extra = [*rid, ("retry-after", "1"), ("x-ratelimit-remaining-requests", "0")] if code == 429 else [*rid]
    if retry_after is not None:
        extra = [(n, v) for n, v in extra if n != "retry-after"] + [("retry-after", f"{retry_after:g}")]
    return code, _err(etype, ecode, f"mock error {code}"), extra


class _Sse:
    """Writes SSE events as HTTP/1.1 chunks, flushed per event (or per fixed-size byte chunk)."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: Plan) -> None:
        self.conn, self.writer, self.plan = conn, writer, plan
        self.eol = "\r\n" if plan.crlf else "\n"
        self.buf = bytearray()

    async def event(self, obj: dict[str, Any]) -> None:
        eol = self.eol
        text = f": keepalive{eol}{eol}" if self.plan.comments and obj["sequence_number"] else ""
        data = json.dumps(obj, separators=(",", ":"))
        await self.write(f"{text}event: {obj['type']}{eol}data: {data}{eol}{eol}".encode())

    async def write(self, data: bytes, flush: bool = False) -> None:
        self.buf += data
        size = self.plan.chunk or len(self.buf)
        while (size and len(self.buf) >= size) or (flush and self.buf):
            piece = bytes(self.buf[:size])
            del self.buf[:size]
            self.writer.write(self.conn.send(h11.Data(data=piece)) or b"")
            await self.writer.drain()

    async def pause(self, seconds: float) -> None:
        await self.write(b"", flush=True)
        await asyncio.sleep(seconds)

    async def close(self, done: bool = True) -> None:
        await self.write(f"data: [DONE]{self.eol}{self.eol}".encode() if done and self.plan.done else b"", flush=True)
        self.writer.write(self.conn.send(h11.EndOfMessage()) or b"")
        await self.writer.drain()


@dataclass
class _WsPeer:
    """One accepted WebSocket: its handshake, the completed responses it may continue, the response in flight."""

    ws: WsConnection
    writer: asyncio.StreamWriter
    target: str
    headers: list[list[str]]
    cache: dict[str, list[Any]] = field(default_factory=dict)  # response id -> its full input + output items
    task: asyncio.Task[None] | None = None
    parts: list[str] = field(default_factory=list)  # a fragmented message so far

    def send(self, event: Event) -> None:
        state = self.ws.state
        if state is ConnectionState.OPEN or (state is ConnectionState.REMOTE_CLOSING
                                             and isinstance(event, CloseConnection)):
            self.writer.write(self.ws.send(event))

    def frame(self, obj: dict[str, Any]) -> None:
        self.send(TextMessage(data=json.dumps(obj, separators=(",", ":"))))

    def error(self, code: str, message: str) -> None:
        self.frame({"type": "error", "status": 400, **_err("invalid_request_error", code, message)})


class MockUpstream:
    """Responses API gateway mock: POST …/responses streams SSE; WebSocket upgrades get 405, or in WebSocket mode
    serve `response.create` frames like OpenAI's Responses WebSocket mode; /__mock/* inspects; optional TLS."""

    def __init__(self, log_requests: str | None = None, websocket: bool = False,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 upgrade_headers: Sequence[tuple[str, str]] = ()) -> None:
        self.requests: list[dict[str, Any]] = []
        self.upgrade_attempts: int = 0
        self.active_streams: int = 0
        self.websocket = websocket
        self.upgrade_headers = list(upgrade_headers)  # on every 101 (what Codex reads only there: x-reasoning-included)
        self.ws_connections = self.ws_open = self.ws_pings_received = self.ws_pongs_received = 0
        self._counter = 0
        self._failed: dict[str, int] = {}  # prompt -> requests it failed ([[fail_times:N]])
        self._log_path = log_requests
        self._log_file: IO[str] | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ssl: ssl.SSLContext | None = None
        if tls_key and not tls_cert:
            raise ValueError("tls_key needs tls_cert")
        if tls_cert:
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ssl.load_cert_chain(tls_cert, tls_key)
            self._ssl.set_alpn_protocols(["http/1.1"])

    @property
    def scheme(self) -> str:
        return "http" if self._ssl is None else "https"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._log_path:
            self._log_file = open(self._log_path, "a", encoding="utf-8")
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self._ssl)
        return int(self._server.sockets[0].getsockname()[1])
    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while isinstance(req := await self._next(conn, reader), h11.Request):
                body = bytearray()
                while not isinstance(ev := await self._next(conn, reader), h11.EndOfMessage):
                    if not isinstance(ev, h11.Data):
                        return
                    body += ev.data
                if self.websocket and req.method == b"GET" and _path(req).endswith("/responses") and _upgrade(req):
                    self.upgrade_attempts += 1
                    await self._websocket(conn, reader, writer, req)
                    break
                await self._guarded(reader, conn, self._dispatch(conn, writer, req, bytes(body)))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            with contextlib.suppress(Exception):
                await self._json(conn, writer, exc.error_status_hint,
                                 _err("invalid_request_error", "bad_request", str(exc)))
        except (OSError, h11.LocalProtocolError) as exc:
            log.debug("connection ended: %r", exc)
        except asyncio.CancelledError:
            pass  # from stop(); ending normally keeps 3.12.1's start_server done-callback from logging a traceback
        except Exception:
            log.exception("mock upstream connection handler failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while (ev := conn.next_event()) is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        return ev

    @staticmethod
    async def _watch(reader: asyncio.StreamReader, conn: h11.Connection) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                conn.receive_data(data)  # pipelined bytes stay buffered in h11 for the next cycle

    async def _guarded(self, reader: asyncio.StreamReader, conn: h11.Connection,
                       coro: Coroutine[Any, Any, None]) -> None:
        """Run one response, cancelling it as soon as the client hangs up (even while it sleeps)."""
        work, watch = asyncio.ensure_future(coro), asyncio.ensure_future(self._watch(reader, conn))
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            work.cancel()  # no-op when already done
            await asyncio.gather(work, watch, return_exceptions=True)
        if work.cancelled():
            raise ConnectionResetError("client went away mid-response")
        work.result()

    async def _json(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, obj: Any,
                    extra: Headers = ()) -> None:
        body = json.dumps(obj).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body))), *extra]
        reason = _STATUS_PHRASES.get(status, b"")
        for event in (h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body),
                      h11.EndOfMessage()):
            writer.write(conn.send(event) or b"")
        await writer.drain()

    async def _dispatch(self, conn: h11.Connection, writer: asyncio.StreamWriter, req: h11.Request,
                        body: bytes) -> None:
        method, target, path, headers = req.method.decode(), req.target.decode("latin-1"), _path(req), _headers(req)
        upgrade = _upgrade(req)
        self.upgrade_attempts += int(upgrade)
        if upgrade or (path.endswith("/responses") and method != "POST"):
            what = "WebSocket upgrade" if upgrade else method
            return await self._json(conn, writer, 405, _err("invalid_request_error", "method_not_allowed",
                                    f"{what} is not supported by this gateway; use POST"), [("allow", "POST")])
        if path.endswith("/responses"):
            return await self._responses(conn, writer, method, target, headers, body)
        if (method, path) == ("GET", "/__mock/requests"):
            return await self._json(conn, writer, 200, self.requests)
        if (method, path) == ("POST", "/__mock/reset"):
            self.requests.clear()
            self._failed.clear()
            self.upgrade_attempts = self.ws_connections = self.ws_pings_received = self.ws_pongs_received = 0
            return await self._json(conn, writer, 200, {"ok": True})
        if (method, path) == ("GET", "/__mock/stats"):
            return await self._json(conn, writer, 200, {
                "upgrade_attempts": self.upgrade_attempts, "requests": len(self.requests),
                "active_streams": self.active_streams, "ws_connections": self.ws_connections, "ws_open": self.ws_open,
                "ws_pings_received": self.ws_pings_received, "ws_pongs_received": self.ws_pongs_received})
        await self._json(conn, writer, 404, _err("invalid_request_error", "not_found", f"no route for {method} {path}"))

    def _transient(self, plan: Plan) -> Plan:
        """`[[fail_times:N]]`: the prompt's failure directives hold for its first N requests (over either
        transport), as a gateway's passing trouble does; later ones are answered normally."""
        if plan.fail_times is None:
            return plan
        failed = self._failed.get(plan.prompt, 0)
        if failed >= plan.fail_times:
            return healed(plan)
        self._failed[plan.prompt] = failed + 1
        return plan

    def _record(self, record: dict[str, Any]) -> None:
        self.requests.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()

    async def _responses(self, conn: h11.Connection, writer: asyncio.StreamWriter, method: str, target: str,
                         headers: list[list[str]], body: bytes) -> None:
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self._record({"method": method, "path": target, "headers": headers, "json": parsed})
        self._counter += 1
        n, plan = self._counter, self._transient(plan_for(parsed))
        rid = [("x-request-id", f"req_mock_{n}"), *plan.headers]
        if plan.delay_headers:
            await asyncio.sleep(plan.delay_headers)
        if not isinstance(parsed, dict):
            return await self._json(conn, writer, 400, _err("invalid_request_error", "invalid_json",
                                    "the body must be a JSON object"), rid)
        if plan.error is not None:
            return await self._json(conn, writer, *planned_error(plan.error, rid, plan.retry_after))
        events = events_for(plan, n, parsed.get("model") or "gpt-5.5", input_tokens(parsed.get("input")), parsed)
        self.active_streams += 1
        try:
            await self._stream(conn, writer, plan, events, rid)
        finally:
            self.active_streams -= 1

    async def _stream(self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: Plan, events: Events,
                      rid: Headers) -> None:
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache"), *rid,
                   ("transfer-encoding", "chunked")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")) or b"")
        sse = _Sse(conn, writer, plan)
        for ev in events:
            if ev is None:
                if plan.reset:  # what was sent so far goes out, then the connection drops mid-body
                    await sse.write(b"", flush=True)
                    writer.transport.abort()
                    raise ConnectionResetError("mock reset")
                return await sse.close(done=False)
            await (sse.event(ev) if isinstance(ev, dict) else sse.pause(ev))
        await sse.close()

    async def _websocket(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         req: h11.Request) -> None:
        """Accept the upgrade (no extensions, no subprotocol), then serve frames until either side closes."""
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.initiate_upgrade_connection(list(req.headers.raw_items()), req.target)
        except WsHandshakeError as exc:
            status, extra = getattr(exc.event_hint, "status_code", 400), getattr(exc.event_hint, "headers", [])
            return await self._json(conn, writer, status, _err("invalid_request_error", "bad_websocket_handshake",
                                    str(exc)), [(n.decode(), v.decode()) for n, v in extra])
        extra = [(n.encode(), v.encode()) for n, v in self.upgrade_headers]
        writer.write(handshake.send(AcceptConnection(extra_headers=extra)))
        assert handshake.connection is not None
        peer = _WsPeer(handshake.connection, writer, req.target.decode("latin-1"), _headers(req))
        self.ws_connections += 1
        self.ws_open += 1
        try:
            data: bytes | None = conn.trailing_data[0]  # frames the client sent right behind its request
            while True:
                peer.ws.receive_data(data)
                for event in peer.ws.events():
                    self._ws_event(peer, event)
                await writer.drain()
                if peer.ws.state is ConnectionState.CLOSED:
                    break
                data = await reader.read(65536) or None  # None: the client dropped the connection
        finally:
            self.ws_open -= 1
            if peer.task is not None:
                peer.task.cancel()
                await asyncio.gather(peer.task, return_exceptions=True)

    def _ws_event(self, peer: _WsPeer, event: Event) -> None:
        if isinstance(event, Ping):
            self.ws_pings_received += 1
            peer.send(event.response())
        elif isinstance(event, Pong):
            self.ws_pongs_received += 1
        elif isinstance(event, CloseConnection):  # the client's close (answered), a protocol error or a drop
            if peer.task is not None:
                peer.task.cancel()
            peer.send(event.response())
        elif isinstance(event, Message):
            peer.parts.append(event.data if isinstance(event, TextMessage) else bytes(event.data).decode("latin-1"))
            if event.message_finished:
                text, peer.parts = "".join(peer.parts), []
                self._ws_frame(peer, text, isinstance(event, BytesMessage))

    def _ws_frame(self, peer: _WsPeer, text: str, binary: bool) -> None:
        try:
            frame: Any = None if binary else json.loads(text)
        except ValueError:
            frame = None
        self._record({"method": "WS", "path": peer.target, "headers": peer.headers, "json": frame})
        if not isinstance(frame, dict):
            return peer.error("invalid_json", "each frame must be a JSON object in a text frame")
        if frame.get("type") != "response.create":
            return None  # like OpenAI: other client events are no concern of this mock
        if peer.task is not None and not peer.task.done():
            return peer.error("conversation_already_has_active_response",
                              "Another response is already in progress on this connection.")
        prev = frame.get("previous_response_id")
        if prev is not None and not (isinstance(prev, str) and prev in peer.cache):
            return peer.error("previous_response_not_found", f"Previous response with id '{prev}' not found.")
        peer.task = asyncio.create_task(self._ws_response(peer, frame, peer.cache[prev] if prev else []))
        return None

    async def _ws_response(self, peer: _WsPeer, frame: dict[str, Any], history: list[Any]) -> None:
        """One response.create: the events the POST path would send for the full input, one text frame each."""
        items = frame.get("input")
        items = [user_message(items)] if isinstance(items, str) else items
        body = {k: v for k, v in frame.items() if k not in WS_ONLY_KEYS}
        body.update(input=[*history, *(items if isinstance(items, list) else [])], stream=True)
        self._counter += 1
        n, plan = self._counter, self._transient(plan_for(body)) if frame.get("generate") is not False else Plan(generate=False)
        try:
            if plan.delay_headers:
                await asyncio.sleep(plan.delay_headers)
            if plan.error is not None:
                status, err, extra = planned_error(plan.error, [("x-request-id", f"req_mock_{n}"), *plan.headers],
                                                   plan.retry_after)
                return peer.frame({"type": "error", "status": status, **err, "headers": dict(extra)})
            if is_codex_client((n, v) for n, v in peer.headers):  # Codex's events, for Codex only
                for event in plan.ws_events:  # what the POST answer's headers say, as a native server sends it
                    peer.frame(event)
            self.active_streams += 1
            try:
                for ev in events_for(plan, n, body.get("model") or "gpt-5.5", input_tokens(body["input"]), body):
                    if isinstance(ev, dict):
                        await peer.writer.drain()  # before, not after: a finished task means the response is done
                        peer.frame(ev)
                        if ev["type"] == "response.completed":
                            peer.cache[ev["response"]["id"]] = [*body["input"], *ev["response"]["output"]]
                    elif ev is None:
                        if plan.reset:  # dropped without a close frame
                            return peer.writer.transport.abort()
                        return peer.send(CloseConnection(code=1011, reason="mock truncation"))
                    else:
                        await asyncio.sleep(ev)
            finally:
                self.active_streams -= 1
        except OSError as exc:
            log.debug("websocket response ended: %r", exc)
        except Exception:
            log.exception("mock upstream websocket response failed")


def _path(req: h11.Request) -> str:
    return req.target.decode("latin-1").split("?", 1)[0]


def _headers(req: h11.Request) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers.raw_items()]


def _upgrade(req: h11.Request) -> bool:
    return any(n.lower() == b"upgrade" and b"websocket" in v.lower() for n, v in req.headers.raw_items())


def _err(etype: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": etype, "code": code, "message": message}}


async def _serve(host: str, port: int, log_requests: str | None, websocket: bool = False,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 upgrade_headers: Sequence[tuple[str, str]] = ()) -> None:
    mock = MockUpstream(log_requests=log_requests, websocket=websocket, tls_cert=tls_cert, tls_key=tls_key,
                        upgrade_headers=upgrade_headers)
    bound = await mock.start(host, port)
    log.info("mock upstream listening on %s://%s:%d/v1%s", mock.scheme, host, bound,
             " (WebSocket mode on)" if websocket else "")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await mock.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--log-requests", metavar="FILE", help="append each recorded request to FILE as a JSON line")
    parser.add_argument("--websocket", action="store_true",
                        help="accept WebSocket upgrades on …/responses (Responses API WebSocket mode)")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS/WSS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    parser.add_argument("--upgrade-header", metavar="NAME:VALUE", action="append", default=[],
                        help="with --websocket, a header for every 101 answer (repeatable), e.g. x-reasoning-included:true")
    args = parser.parse_args(argv)
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    upgrade_headers = [tuple(h.strip() for h in item.split(":", 1)) for item in args.upgrade_header]
    if any(len(pair) != 2 or not pair[0] for pair in upgrade_headers):
        parser.error("--upgrade-header takes NAME:VALUE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args.host, args.port, args.log_requests, args.websocket, args.tls_cert, args.tls_key,
                       [(name, value) for name, value in upgrade_headers]))


if __name__ == "__main__":
    main()
