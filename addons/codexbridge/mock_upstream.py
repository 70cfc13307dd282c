"""Loopback HTTP/1.1 mock of an OpenAI Responses API gateway that speaks only POST + SSE (no WebSocket)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import logging
import re
import secrets
import signal
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import h11

log = logging.getLogger("codexbridge.mock_upstream")

DEFAULT_TEXT = "hi from mock"
_DIRECTIVE = re.compile(r"\[\[([a-z_]+)(?::(.*?))?\]\]", re.DOTALL)
_ERRORS = {
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key"),
}
_FLAGS = ("truncate", "crlf", "comments", "done")
_ENDS = ("failed", "incomplete", "sse_error")
Headers = Sequence[tuple[str, str]]


class _ClientGone(Exception):
    """The peer went away while a response was being produced."""


@dataclass
class Plan:
    """What to answer to one POST /responses, derived from its body."""

    text: str = DEFAULT_TEXT
    deltas: list[str] = field(default_factory=lambda: [DEFAULT_TEXT])
    tool_call: bool = False
    error: int | None = None
    sleep: float = 0.0
    delay_headers: float = 0.0
    pace: float = 0.0
    chunk: int = 0
    end: str = "completed"
    truncate: bool = False
    crlf: bool = False
    comments: bool = False
    done: bool = False


def _text_of(content: Any, kinds: tuple[str, ...]) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(p["text"] for p in content if isinstance(p, dict)
                   and p.get("type") in kinds and isinstance(p.get("text"), str))


def plan_for(body: Any) -> Plan:
    """Choose the behaviour for a request body (see the directive list in the README/report)."""
    plan = Plan()
    items = body.get("input") if isinstance(body, dict) else None
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    if items and items[-1].get("type") == "function_call_output":
        lines = [ln.strip() for ln in _text_of(items[-1].get("output"), ("input_text", "output_text")).splitlines()]
        lines = [ln for ln in lines if ln]
        plan.text = f"tool said: {lines[-1] if lines else ''}"
        plan.deltas = [plan.text]
        return plan
    user = next((i for i in reversed(items) if i.get("role") == "user" and i.get("type", "message") == "message"), {})
    raw = _text_of(user.get("content"), ("input_text",))
    reply: str | None = None
    n_deltas = 0
    for m in _DIRECTIVE.finditer(raw):
        name, arg = m.group(1), m.group(2)
        try:
            if name == "error":
                plan.error = int(arg)
            elif name in ("sleep", "delay_headers"):
                setattr(plan, name, max(0.0, float(arg)))
            elif name == "pace_ms":
                plan.pace = max(0.0, float(arg)) / 1000
            elif name == "deltas":
                n_deltas = min(max(0, int(arg)), 100_000)
            elif name == "chunk":
                plan.chunk = max(1, int(arg))
            elif name == "reply":
                reply = arg or ""
            elif name in _ENDS:
                plan.end = name
            elif name in _FLAGS:
                setattr(plan, name, True)
        except (TypeError, ValueError):
            continue
    if "run echo" in _DIRECTIVE.sub("", raw):
        plan.tool_call = True
    text = DEFAULT_TEXT if reply is None else reply
    if n_deltas:
        words = [] if reply is None else reply.split()
        words += [f"word{i}" for i in range(len(words) + 1, n_deltas + 1)]
        plan.deltas = [w + " " for w in words[:n_deltas - 1]] + [" ".join(words[n_deltas - 1:])]
        text = "".join(plan.deltas)
    else:
        plan.deltas = [text]
    plan.text = text
    return plan


class _Sse:
    """Writes SSE events as HTTP chunks, flushing each one (or fixed-size byte chunks)."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: Plan) -> None:
        self.conn, self.writer, self.plan = conn, writer, plan
        self.eol = "\r\n" if plan.crlf else "\n"
        self.seq = 0
        self.buf = bytearray()

    async def event(self, type_: str, **fields: Any) -> None:
        obj = {"type": type_, "sequence_number": self.seq, **fields}
        eol = self.eol
        text = f": keepalive{eol}{eol}" if self.plan.comments and self.seq else ""
        text += f"event: {type_}{eol}data: {json.dumps(obj, separators=(',', ':'))}{eol}{eol}"
        self.seq += 1
        await self._write(text.encode())

    async def _write(self, data: bytes) -> None:
        if not self.plan.chunk:
            return await self._emit(data)
        self.buf += data
        while len(self.buf) >= self.plan.chunk:
            piece = bytes(self.buf[:self.plan.chunk])
            del self.buf[:self.plan.chunk]
            await self._emit(piece)

    async def _emit(self, data: bytes) -> None:
        self.writer.write(self.conn.send(h11.Data(data=data)) or b"")
        await self.writer.drain()

    async def flush(self) -> None:
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            await self._emit(data)

    async def pause(self, seconds: float) -> None:
        await self.flush()
        await asyncio.sleep(seconds)

    async def close(self, done: bool = True) -> None:
        if done and self.plan.done:
            await self._write(f"data: [DONE]{self.eol}{self.eol}".encode())
        await self.flush()
        self.writer.write(self.conn.send(h11.EndOfMessage()) or b"")
        await self.writer.drain()


class MockUpstream:
    """A loopback Responses API gateway: POST /…/responses answers with SSE; WebSocket upgrades get 405."""

    def __init__(self, log_requests: str | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.upgrade_attempts: int = 0
        self.active_streams: int = 0
        self._counter = 0
        self._log_path = log_requests
        self._log_file: IO[str] | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._log_path:
            self._log_file = open(self._log_path, "a", encoding="utf-8")
        self._server = await asyncio.start_server(self._handle, host, port)
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

    # -- connection handling -------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await self._next(conn, reader)
                if not isinstance(req, h11.Request):
                    break
                body = bytearray()
                while not isinstance(ev := await self._next(conn, reader), h11.EndOfMessage):
                    if not isinstance(ev, h11.Data):
                        return
                    body += ev.data
                await self._guarded(reader, conn, self._dispatch(conn, writer, req, bytes(body)))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    await self._json(conn, writer, exc.error_status_hint, _err("invalid_request_error", "bad_request", str(exc)))
        except (_ClientGone, OSError, h11.LocalProtocolError) as exc:
            log.debug("connection ended: %r", exc)
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
                conn.receive_data(data)  # pipelined bytes: buffered for the next cycle

    async def _guarded(self, reader: asyncio.StreamReader, conn: h11.Connection, coro: Coroutine[Any, Any, None]) -> None:
        """Run a response coroutine, cancelling it as soon as the client hangs up."""
        work = asyncio.ensure_future(coro)
        watch = asyncio.ensure_future(self._watch(reader, conn))
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
            await asyncio.gather(work, watch, return_exceptions=True)
        if work.cancelled():
            raise _ClientGone
        work.result()

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, *events: Any) -> None:
        for event in events:
            writer.write(conn.send(event) or b"")
        await writer.drain()

    async def _json(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, obj: Any,
                    extra: Headers = ()) -> None:
        body = json.dumps(obj).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body))), *extra]
        reason = http.HTTPStatus(status).phrase.encode() if status in http.HTTPStatus._value2member_map_ else b""
        await self._send(conn, writer, h11.Response(status_code=status, headers=headers, reason=reason),
                         h11.Data(data=body), h11.EndOfMessage())

    async def _dispatch(self, conn: h11.Connection, writer: asyncio.StreamWriter, req: h11.Request, body: bytes) -> None:
        method, target = req.method.decode(), req.target.decode("latin-1")
        path = target.split("?", 1)[0]
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers.raw_items()]
        if any(n.lower() == "upgrade" and "websocket" in v.lower() for n, v in headers):
            self.upgrade_attempts += 1
            return await self._json(conn, writer, 405, _err("invalid_request_error", "method_not_allowed",
                                    "WebSocket is not supported here; use POST"), [("allow", "POST")])
        if path.endswith("/responses"):
            if method != "POST":
                return await self._json(conn, writer, 405, _err("invalid_request_error", "method_not_allowed",
                                        f"{method} not allowed"), [("allow", "POST")])
            return await self._responses(conn, writer, method, target, headers, body)
        if (method, path) == ("GET", "/__mock/requests"):
            return await self._json(conn, writer, 200, self.requests)
        if (method, path) == ("POST", "/__mock/reset"):
            self.requests.clear()
            self.upgrade_attempts = 0
            return await self._json(conn, writer, 200, {"ok": True})
        if (method, path) == ("GET", "/__mock/stats"):
            return await self._json(conn, writer, 200, {"upgrade_attempts": self.upgrade_attempts,
                                    "requests": len(self.requests), "active_streams": self.active_streams})
        await self._json(conn, writer, 404, _err("invalid_request_error", "not_found", f"no route for {method} {path}"))

    # -- /responses ----------------------------------------------------------
    async def _responses(self, conn: h11.Connection, writer: asyncio.StreamWriter, method: str, target: str,
                         headers: list[list[str]], body: bytes) -> None:
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = {"method": method, "path": target, "headers": headers, "json": parsed}
        self.requests.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()
        self._counter += 1
        n = self._counter
        plan = plan_for(parsed)
        if plan.delay_headers:
            await asyncio.sleep(plan.delay_headers)
        rid = [("x-request-id", f"req_mock_{n}")]
        if not isinstance(parsed, dict):
            return await self._json(conn, writer, 400, _err("invalid_request_error", "invalid_json",
                                    "body must be a JSON object"), rid)
        if plan.error is not None:
            code = plan.error if 200 <= plan.error <= 599 else 500
            etype, ecode = _ERRORS.get(code, ("server_error", "server_error"))
            if code == 429:
                rid += [("retry-after", "1"), ("x-ratelimit-remaining-requests", "0")]
            return await self._json(conn, writer, code, _err(etype, ecode, f"mock error {code}"), rid)
        self.active_streams += 1
        try:
            await self._stream(conn, writer, plan, n, parsed, len(body), rid)
        finally:
            self.active_streams -= 1

    async def _stream(self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: Plan, n: int,
                      body: dict[str, Any], body_len: int, rid: Headers) -> None:
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache"), *rid,
                   ("transfer-encoding", "chunked")]
        await self._send(conn, writer, h11.Response(status_code=200, headers=headers, reason=b"OK"))
        sse = _Sse(conn, writer, plan)
        created, model = int(time.time()), body.get("model") or "gpt-5.5"

        def resp(status: str, output: list[Any], **extra: Any) -> dict[str, Any]:
            return {"id": f"resp_mock_{n}", "object": "response", "created_at": created, "status": status,
                    "model": model, "output": output, **extra}

        await sse.event("response.created", response=resp("in_progress", []))
        if plan.end == "sse_error":
            await sse.event("error", code="server_error", message="mock stream error")
            return await sse.close()
        await sse.event("response.in_progress", response=resp("in_progress", []))
        if plan.sleep:
            await sse.pause(plan.sleep)
        if plan.tool_call:
            fid, args = f"fc_{secrets.token_hex(6)}", json.dumps({"cmd": "echo hello-from-tool"})
            item: dict[str, Any] = {"type": "function_call", "id": fid, "call_id": f"call_{secrets.token_hex(4)}",
                                    "name": "exec_command", "arguments": args, "status": "completed"}
            await sse.event("response.output_item.added", output_index=0,
                            item={**item, "arguments": "", "status": "in_progress"})
            await sse.event("response.function_call_arguments.delta", item_id=fid, output_index=0, delta=args)
            if plan.truncate:
                return await sse.close(done=False)
            await sse.event("response.function_call_arguments.done", item_id=fid, output_index=0, arguments=args)
            out_tokens = 1
        else:
            mid = f"msg_{secrets.token_hex(6)}"
            where = {"item_id": mid, "output_index": 0, "content_index": 0}
            await sse.event("response.output_item.added", output_index=0,
                            item={"id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []})
            await sse.event("response.content_part.added", **where, part={"type": "output_text", "annotations": [], "text": ""})
            for i, delta in enumerate(plan.deltas):
                if i and plan.pace:
                    await sse.pause(plan.pace)
                await sse.event("response.output_text.delta", **where, delta=delta)
                if plan.truncate:
                    return await sse.close(done=False)
            part = {"type": "output_text", "annotations": [], "text": plan.text}
            await sse.event("response.output_text.done", **where, text=plan.text)
            await sse.event("response.content_part.done", **where, part=part)
            item = {"id": mid, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
            out_tokens = len(plan.deltas)
        await sse.event("response.output_item.done", output_index=0, item=item)
        in_tokens = body_len // 4
        usage = {"input_tokens": in_tokens, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out_tokens,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": in_tokens + out_tokens}
        if plan.end == "failed":
            await sse.event("response.failed", response=resp(
                "failed", [item], error={"code": "server_error", "message": "mock failure"}, usage=usage))
        elif plan.end == "incomplete":
            await sse.event("response.incomplete", response=resp(
                "incomplete", [item], incomplete_details={"reason": "max_output_tokens"}, usage=usage))
        else:
            await sse.event("response.completed", response=resp("completed", [item], usage=usage))
        await sse.close()


def _err(etype: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": etype, "code": code, "message": message}}


async def _serve(host: str, port: int, log_requests: str | None) -> None:
    mock = MockUpstream(log_requests=log_requests)
    bound = await mock.start(host, port)
    log.info("mock upstream listening on http://%s:%d/v1", host, bound)
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
    parser.add_argument("--log-requests", metavar="FILE", help="append each recorded request as a JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args.host, args.port, args.log_requests))


if __name__ == "__main__":
    main()
