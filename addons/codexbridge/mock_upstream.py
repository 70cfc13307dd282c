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
DIRECTIVE = re.compile(r"\[\[([a-z_]+)(?::(.*?))?\]\]", re.DOTALL)
_NUMERIC = ("error", "sleep", "delay_headers", "pace_ms", "deltas", "chunk")
_FLAGS = ("truncate", "crlf", "comments", "done")
_ENDS = ("failed", "incomplete", "sse_error")
_ERRORS = {429: ("rate_limit_exceeded", "rate_limit_exceeded"), 400: ("invalid_request_error", "invalid_request_error"),
           401: ("invalid_request_error", "invalid_api_key")}
_STATUS_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}
Headers = Sequence[tuple[str, str]]


@dataclass
class Plan:
    """What to answer to one POST /responses, derived from its body by plan_for()."""

    text: str = DEFAULT_TEXT
    deltas: list[str] = field(default_factory=lambda: [DEFAULT_TEXT])
    tool_call: bool = False
    error: int | None = None
    sleep: float = 0.0
    delay_headers: float = 0.0
    pace: float = 0.0
    chunk: int = 0
    end: str = "completed"  # or one of _ENDS
    truncate: bool = False
    crlf: bool = False
    comments: bool = False
    done: bool = False


def _text_of(content: Any, kinds: tuple[str, ...]) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(p["text"] for p in parts
                   if isinstance(p, dict) and p.get("type") in kinds and isinstance(p.get("text"), str))


def plan_for(body: Any) -> Plan:
    """Choose the behaviour for one request body: tool output echo, directives, `run echo` tool call, or text."""
    plan = Plan()
    items = body.get("input") if isinstance(body, dict) else None
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    if items and items[-1].get("type") == "function_call_output":
        output = _text_of(items[-1].get("output"), ("input_text", "output_text"))
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        plan.text = f"tool said: {lines[-1] if lines else ''}"
        plan.deltas = [plan.text]
        return plan
    user = next((i for i in reversed(items) if i.get("role") == "user" and i.get("type", "message") == "message"), {})
    raw = _text_of(user.get("content"), ("input_text",))
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


class _Sse:
    """Writes SSE events as HTTP/1.1 chunks, flushed per event (or per fixed-size byte chunk)."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: Plan) -> None:
        self.conn, self.writer, self.plan = conn, writer, plan
        self.eol = "\r\n" if plan.crlf else "\n"
        self.seq = 0
        self.buf = bytearray()

    async def event(self, type_: str, **fields: Any) -> None:
        obj = {"type": type_, "sequence_number": self.seq, **fields}
        eol = self.eol
        text = f": keepalive{eol}{eol}" if self.plan.comments and self.seq else ""
        self.seq += 1
        await self.write(f"{text}event: {type_}{eol}data: {json.dumps(obj, separators=(',', ':'))}{eol}{eol}".encode())

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


class MockUpstream:
    """Responses API gateway mock: POST …/responses streams SSE, WebSocket upgrades get 405, /__mock/* inspects."""

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
        method, target = req.method.decode(), req.target.decode("latin-1")
        path = target.split("?", 1)[0]
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers.raw_items()]
        upgrade = any(n.lower() == "upgrade" and "websocket" in v.lower() for n, v in headers)
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
            self.upgrade_attempts = 0
            return await self._json(conn, writer, 200, {"ok": True})
        if (method, path) == ("GET", "/__mock/stats"):
            return await self._json(conn, writer, 200, {"upgrade_attempts": self.upgrade_attempts,
                                    "requests": len(self.requests), "active_streams": self.active_streams})
        await self._json(conn, writer, 404, _err("invalid_request_error", "not_found", f"no route for {method} {path}"))

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
        n, plan = self._counter, plan_for(parsed)
        rid = [("x-request-id", f"req_mock_{n}")]
        if plan.delay_headers:
            await asyncio.sleep(plan.delay_headers)
        if not isinstance(parsed, dict):
            return await self._json(conn, writer, 400, _err("invalid_request_error", "invalid_json",
                                    "the body must be a JSON object"), rid)
        if plan.error is not None:
            code = plan.error if 200 <= plan.error <= 599 else 500
            etype, ecode = _ERRORS.get(code, ("server_error", "server_error"))
            if code == 429:
                rid += [("retry-after", "1"), ("x-ratelimit-remaining-requests", "0")]
            return await self._json(conn, writer, code, _err(etype, ecode, f"mock error {code}"), rid)
        self.active_streams += 1
        try:
            await self._stream(conn, writer, plan, n, parsed.get("model") or "gpt-5.5", len(body) // 4, rid)
        finally:
            self.active_streams -= 1

    async def _stream(self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: Plan, n: int, model: str,
                      in_tokens: int, rid: Headers) -> None:
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache"), *rid,
                   ("transfer-encoding", "chunked")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")) or b"")
        sse, created = _Sse(conn, writer, plan), int(time.time())

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
            item = {"id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            await sse.event("response.output_item.added", output_index=0, item=item)
            part = {"type": "output_text", "annotations": [], "text": ""}
            await sse.event("response.content_part.added", **where, part=part)
            for i, delta in enumerate(plan.deltas):
                if i and plan.pace:
                    await sse.pause(plan.pace)
                await sse.event("response.output_text.delta", **where, delta=delta)
                if plan.truncate:
                    return await sse.close(done=False)
            part = {**part, "text": plan.text}
            await sse.event("response.output_text.done", **where, text=plan.text)
            await sse.event("response.content_part.done", **where, part=part)
            item = {**item, "status": "completed", "content": [part]}
            out_tokens = len(plan.deltas)
        await sse.event("response.output_item.done", output_index=0, item=item)
        usage = {"input_tokens": in_tokens, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out_tokens,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": in_tokens + out_tokens}
        if plan.end == "failed":
            extra: dict[str, Any] = {"error": {"code": "server_error", "message": "mock failure"}}
        elif plan.end == "incomplete":
            extra = {"incomplete_details": {"reason": "max_output_tokens"}}
        else:
            extra = {}
        status = plan.end if plan.end in ("failed", "incomplete") else "completed"
        await sse.event(f"response.{status}", response=resp(status, [item], **extra, usage=usage))
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
    parser.add_argument("--log-requests", metavar="FILE", help="append each recorded request to FILE as a JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args.host, args.port, args.log_requests))


if __name__ == "__main__":
    main()
