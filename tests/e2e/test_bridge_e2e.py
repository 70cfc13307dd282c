"""The bridge through a real mitmdump, driven by a real WebSocket client, against a real SSE upstream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from codexbridge.tools.procs import free_port
from support import wait_for
from support.mitmdump import Mitmdump, start_mitmdump
from support.upstream import Upstream

TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def msg(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def create(text: str | None = None, previous: str | None = None, **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "response.create", "model": "gpt-5.5", "store": False,
                             "input": [msg("user", text)] if text is not None else []}
    if previous:
        frame["previous_response_id"] = previous
    frame.update(extra)
    return frame


async def until_terminal(ws: ClientConnection, timeout: float = 15) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str), "the bridge must only send text frames"
            events.append(json.loads(raw))
            if events[-1]["type"] in TERMINAL:
                return events


async def turn(ws: ClientConnection, frame: dict[str, Any] | str | bytes) -> list[dict[str, Any]]:
    await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    return await until_terminal(ws)


def connect(proxy: Mitmdump, **kw: Any) -> Any:
    headers = {"Authorization": "Bearer sk-test-secret", **kw.pop("headers", {})}
    return websockets.connect(proxy.ws_url, additional_headers=headers, max_size=None, **kw)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e.get("delta", "") for e in events if e["type"] == "response.output_text.delta")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- handshake, conversation, headers --------------------------------------------------------


def test_upgrade_answered_at_proxy_without_extensions(bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        async with connect(bridge) as ws:  # the client offers permessage-deflate
            assert ws.response.status_code == 101
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert "Sec-WebSocket-Protocol" not in ws.response.headers
            events = await turn(ws, create("say hi"))
            assert [e["type"] for e in events][0] == "response.created"
            assert events[-1]["type"] == "response.completed"
            assert text_of(events) == "hi from mock"

    run(go())
    assert upstream.stats()["upgrade_attempts"] == 0
    (req,) = upstream.requests()
    assert req["method"] == "POST" and req["path"] == "/v1/responses"


def test_prewarm_continuation_and_tool_chain(bridge: Mitmdump, upstream: Upstream) -> None:
    base = msg("developer", "be brief")

    async def go() -> None:
        async with connect(bridge) as ws:
            pre = await turn(ws, create(None, input=[base], generate=False))
            assert [e["type"] for e in pre] == ["response.created", "response.completed"]
            assert pre[-1]["response"]["output"] == []
            rid = pre[-1]["response"]["id"]
            first = await turn(ws, create("run echo", rid))
            call = next(e["item"] for e in first if e["type"] == "response.output_item.done")
            assert call["type"] == "function_call"
            out = {"type": "function_call_output", "call_id": call["call_id"], "output": "hello-from-tool\n"}
            second = await turn(ws, create(None, first[-1]["response"]["id"], input=[out]))
            assert text_of(second) == "tool said: hello-from-tool"
            answer = next(e["item"] for e in second if e["type"] == "response.output_item.done")
            third = await turn(ws, create("again", second[-1]["response"]["id"]))
            assert third[-1]["type"] == "response.completed"
            reqs = upstream.requests()
            assert len(reqs) == 3, "generate:false must not reach the upstream"
            inputs = [r["json"]["input"] for r in reqs]
            assert inputs[0] == [base, msg("user", "run echo")]
            assert inputs[1] == [base, msg("user", "run echo"), call, out]
            assert inputs[2] == [base, msg("user", "run echo"), call, out, answer, msg("user", "again")]
            for r in reqs:
                assert r["json"]["stream"] is True
                assert not {"type", "previous_response_id", "generate"} & set(r["json"])

    run(go())


def test_headers_forwarded_once_without_websocket_ones(bridge: Mitmdump, upstream: Upstream) -> None:
    sent = {
        "originator": "codex_exec",
        "session-id": "s-1",
        "thread-id": "t-1",
        "x-codex-turn-metadata": '{"turn_id":"x"}',
        "x-codex-beta-features": "remote_compaction_v2",
        "OpenAI-Organization": "org-1",
        "OpenAI-Project": "proj-1",
        "ChatGPT-Account-Id": "acct-1",
        "User-Agent": "codex_exec/0.169.0",
        "openai-beta": "responses_websockets=2026-02-06",
        "Content-Type": "text/plain",
        "accept": "application/json",
    }

    async def go() -> None:
        async with connect(bridge, headers=sent, user_agent_header=None) as ws:
            await turn(ws, create("say hi"))

    run(go())
    (req,) = upstream.requests()
    names = [n.lower() for n, _ in req["headers"]]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    got = {n.lower(): v for n, v in req["headers"]}
    for name, value in sent.items():
        if name.lower() not in ("openai-beta", "content-type", "accept"):
            assert got[name.lower()] == value
    assert got["authorization"] == "Bearer sk-test-secret"
    assert got["content-type"] == "application/json"
    assert got["accept"] == "text/event-stream"
    for banned in ("upgrade", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "openai-beta"):
        assert banned not in got
    assert got.get("connection", "keep-alive").lower() != "upgrade"


@pytest.mark.parametrize("directives", ["[[crlf]]", "[[comments]]", "[[done]]", "[[chunk:7]]", "[[chunk:1]][[crlf]]"])
def test_sse_framing_variants_yield_identical_events(bridge: Mitmdump, directives: str) -> None:
    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with connect(bridge) as ws:
            plain = await turn(ws, create("[[deltas:5]] x"))
            varied = await turn(ws, create(f"[[deltas:5]] {directives} x"))
            after = await turn(ws, create("[[deltas:5]] x"))  # nothing of the varied stream may trail into it
            assert after == plain or [e["type"] for e in after] == [e["type"] for e in plain]
            return plain, varied

    plain, varied = run(go())

    def shape(evs: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(e["type"], e.get("delta", "")) for e in evs]

    assert shape(varied) == shape(plain)
    assert len(plain) == 13


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "error_code", "header"),
    [
        (429, 429, "rate_limit_exceeded", "retry-after"),
        (400, 400, None, "x-request-id"),
        (401, 401, None, "x-request-id"),
        (500, 500, None, "x-request-id"),
        (503, 503, None, "x-request-id"),
    ],
)
def test_upstream_http_errors_keep_status_error_and_headers(
    bridge: Mitmdump, code: int, status: int, error_code: str | None, header: str
) -> None:
    async def go() -> None:
        async with connect(bridge) as ws:
            (err,) = await turn(ws, create(f"[[error:{code}]]"))
            assert err["type"] == "error" and err["status"] == status
            assert err["error"]["message"]
            if error_code:
                assert err["error"]["code"] == error_code
            assert header in err["headers"]
            ok = await turn(ws, create("still there?"))
            assert ok[-1]["type"] == "response.completed"

    run(go())


@pytest.mark.parametrize(
    ("directive", "last_type"),
    [("[[failed]]", "response.failed"), ("[[incomplete]]", "response.incomplete"), ("[[sse_error]]", "error")],
)
def test_terminal_upstream_events_pass_through(bridge: Mitmdump, directive: str, last_type: str) -> None:
    async def go() -> None:
        async with connect(bridge) as ws:
            events = await turn(ws, create(directive))
            assert events[-1]["type"] == last_type
            assert "status" not in events[-1] or last_type != "error"  # the upstream's own event, unchanged
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await ws.recv()  # nothing more: no extra error frame after a terminal event

    run(go())


def test_truncated_stream_becomes_retryable_error(bridge: Mitmdump) -> None:
    async def go() -> None:
        async with connect(bridge) as ws:
            events = await turn(ws, create("[[truncate]] [[deltas:3]]"))
            assert events[-1]["type"] == "error"
            assert events[-1]["status"] >= 500
            assert events[-1]["error"]["code"] == "upstream_stream_truncated"
            assert any(e["type"] == "response.output_text.delta" for e in events)

    run(go())


def test_unreachable_upstream_is_502(module_tmp: Path) -> None:
    proxy = start_mitmdump(module_tmp, f"http://127.0.0.1:{free_port()}")
    try:
        async def go() -> None:
            async with connect(proxy) as ws:
                (err,) = await turn(ws, create("hi"))
                assert err["status"] == 502 and err["error"]["code"] == "upstream_unreachable"

        run(go())
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def impatient_bridge(module_tmp: Path, upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, upstream.url, "codexbridge_read_timeout=1", "codexbridge_max_frame_bytes=4096")
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("directive", ["[[delay_headers:3]]", "[[sleep:3]]"])
def test_upstream_timeout_is_504(impatient_bridge: Mitmdump, directive: str) -> None:
    async def go() -> None:
        async with connect(impatient_bridge) as ws:
            events = await turn(ws, create(directive))
            assert events[-1]["type"] == "error" and events[-1]["status"] == 504
            assert events[-1]["error"]["code"] == "upstream_timeout"

    run(go())


BAD_FRAMES: list[tuple[str, Any, str]] = [
    ("invalid json", "{nope", "invalid_json"),
    ("binary", b'{"type":"response.create"}', "binary_frame"),
    ("non-object", "[1, 2]", "invalid_request"),
    ("no type", json.dumps({"model": "m"}), "invalid_request"),
    ("missing model", json.dumps({"type": "response.create", "input": []}), "missing_required_parameter"),
    ("unknown previous id", json.dumps(create("x", "resp_unknown")), "previous_response_not_found"),
    ("oversized", json.dumps(create("x" * 10_000)), "frame_too_large"),
]


@pytest.mark.parametrize(("what", "frame", "code"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_client_frames_get_400_and_session_survives(impatient_bridge: Mitmdump, what: str, frame: Any, code: str) -> None:
    async def go() -> None:
        async with connect(impatient_bridge) as ws:
            (err,) = await turn(ws, frame)
            assert err["type"] == "error" and err["status"] == 400, err
            assert err["error"]["code"] == code
            ok = await turn(ws, create("after the error"))
            assert ok[-1]["type"] == "response.completed"

    run(go())


def test_second_create_in_flight_is_rejected_and_first_completes(bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        async with connect(bridge) as ws:
            await ws.send(json.dumps(create("[[sleep:1]] first")))
            await ws.send(json.dumps(create("second")))
            events = await until_terminal(ws)
            assert events[-1]["type"] == "error" and events[-1]["status"] == 400
            assert events[-1]["error"]["code"] == "response_already_in_progress"
            rest = await until_terminal(ws)
            assert rest[-1]["type"] == "response.completed"

    run(go())
    assert len(upstream.requests()) == 1


def test_unknown_client_events_are_ignored(bridge: Mitmdump) -> None:
    async def go() -> None:
        async with connect(bridge) as ws:
            await ws.send(json.dumps({"type": "response.processed", "response_id": "x"}))
            events = await turn(ws, create("hi"))
            assert events[0]["type"] == "response.created"

    run(go())


def test_failing_sessions_do_not_disturb_a_healthy_one(bridge: Mitmdump) -> None:
    async def healthy() -> str:
        async with connect(bridge) as ws:
            events = await turn(ws, create("[[deltas:40]] [[pace_ms:20]] x"))
            return events[-1]["type"]

    async def broken(i: int) -> None:
        async with connect(bridge) as ws:
            await ws.send("{bad")
            await ws.send(b"\x00\x01")
            await ws.send(json.dumps(create(f"[[error:500]] {i}")))
            await asyncio.sleep(0.1)
            ws.transport.abort()

    async def go() -> None:
        results = await asyncio.gather(healthy(), *(broken(i) for i in range(10)), return_exceptions=True)
        assert results[0] == "response.completed"

    run(go())


# -- disconnects -----------------------------------------------------------------------------


@pytest.mark.parametrize("abort", [False, True], ids=["close-frame", "dropped-socket"])
def test_disconnect_cancels_upstream_by_default(bridge: Mitmdump, upstream: Upstream, abort: bool) -> None:
    async def go() -> None:
        ws = await connect(bridge)
        await ws.send(json.dumps(create("[[deltas:100]] [[pace_ms:50]] x")))
        async with asyncio.timeout(10):
            while json.loads(await ws.recv())["type"] != "response.output_text.delta":
                pass
        assert upstream.stats()["active_streams"] == 1
        if abort:
            ws.transport.abort()
        else:
            await ws.close()
        assert await wait_for(lambda: upstream.stats()["active_streams"] == 0, 2.0), "upstream not cancelled"

    run(go())
    assert "draining" not in bridge.log


@pytest.fixture(scope="module")
def draining_bridge(module_tmp: Path, upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, upstream.url, "codexbridge_on_disconnect=drain")
    yield proxy
    proxy.stop()


def test_disconnect_drains_upstream_in_drain_mode(draining_bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        ws = await connect(draining_bridge)
        await ws.send(json.dumps(create("[[deltas:30]] [[pace_ms:50]] x")))
        async with asyncio.timeout(10):
            while json.loads(await ws.recv())["type"] != "response.output_text.delta":
                pass
        t0 = time.monotonic()
        ws.transport.abort()
        await asyncio.sleep(0.5)
        assert upstream.stats()["active_streams"] == 1, "drain mode must keep reading"
        assert await wait_for(lambda: upstream.stats()["active_streams"] == 0, 5.0)
        assert time.monotonic() - t0 >= 1.0

    run(go())
    assert "draining the upstream" in draining_bridge.log


# -- other traffic and modes -----------------------------------------------------------------


def test_plain_post_sse_is_streamed_not_buffered(bridge: Mitmdump, upstream: Upstream) -> None:
    body = {"model": "m", "stream": True, "input": [msg("user", "[[deltas:6]] [[pace_ms:400]] x")]}
    t0 = time.monotonic()
    first = None
    with httpx.stream("POST", f"{bridge.base_url}/responses", json=body, timeout=20) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            if first is None and b"response.created" in chunk:
                first = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first is not None and total > 2.0
    assert first < total - 1.5, f"first event at {first:.2f}s of {total:.2f}s: the proxy buffered the stream"
    assert upstream.stats()["upgrade_attempts"] == 0


def test_other_paths_pass_through_untouched(bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            async with websockets.connect(bridge.ws_url.replace("/v1/responses", "/v1/other")):
                pass
        assert e.value.response.status_code == 405

    run(go())
    assert upstream.stats()["upgrade_attempts"] == 1


@pytest.mark.parametrize(("mode", "status", "upgrades"), [("reject", 426, 0), ("off", 405, 1)])
def test_reject_and_off_modes(module_tmp: Path, upstream: Upstream, mode: str, status: int, upgrades: int) -> None:
    proxy = start_mitmdump(module_tmp, upstream.url, f"codexbridge_mode={mode}")
    try:
        async def go() -> None:
            with pytest.raises(websockets.exceptions.InvalidStatus) as e:
                async with connect(proxy):
                    pass
            assert e.value.response.status_code == status

        run(go())
        assert upstream.stats()["upgrade_attempts"] == upgrades
    finally:
        proxy.stop()


def test_session_is_an_ordinary_flow_in_flow_files(module_tmp: Path, upstream: Upstream) -> None:
    from mitmproxy import io as mio

    path = module_tmp / "flows.mitm"
    proxy = start_mitmdump(module_tmp, upstream.url, f"save_stream_file={path}")
    try:
        async def go() -> None:
            async with connect(proxy) as ws:
                await turn(ws, create("say hi"))
                await ws.send("{bad")
                await until_terminal(ws)

        run(go())
    finally:
        proxy.stop()
    with open(path, "rb") as f:
        flows = list(mio.FlowReader(f).stream())
    ws_flows = [f for f in flows if getattr(f, "websocket", None) is not None]
    assert len(ws_flows) == 1
    (flow,) = ws_flows
    assert flow.response.status_code == 101
    messages = flow.websocket.messages
    assert [m.from_client for m in messages][:1] == [True]
    server = [json.loads(m.content) for m in messages if not m.from_client]
    assert server[0]["type"] == "response.created" and server[-1]["type"] == "error"
    assert sum(m.from_client for m in messages) == 2
    assert flow.websocket.close_code == 1000


# -- other addons and the client frames (codexbridge_message_hook) ---------------------------------

REWRITER = '''
import json
from codexbridge.addons.bridge import CodexBridge


class Rewriter:
    def websocket_message(self, flow):
        message = flow.websocket.messages[-1]
        if message.from_client and message.is_text:
            frame = json.loads(message.text)
            if frame.get("model") == "drop-me":
                message.drop()
            else:
                frame["model"] = "rewritten-by-addon"
                message.text = json.dumps(frame)


addons = [CodexBridge(), Rewriter()]
'''


@pytest.mark.parametrize("hook", [True, False], ids=["hook-on", "hook-off"])
def test_message_hook_lets_another_addon_change_or_drop_client_frames(hook: bool, tmp_path: Path,
                                                                      upstream: Upstream) -> None:
    script = tmp_path / "bridge_and_rewriter.py"
    script.write_text(REWRITER)
    proxy = start_mitmdump(tmp_path, upstream.url, f"codexbridge_message_hook={str(hook).lower()}", script=str(script))
    upstream.reset()

    async def go() -> None:
        async with connect(proxy) as ws:
            if hook:
                await ws.send(json.dumps(create("dropped?", model="drop-me")))  # dropped: never answered
            else:
                assert (await turn(ws, create("not dropped", model="drop-me")))[-1]["type"] == "response.completed"
            assert (await turn(ws, create("say hi")))[-1]["type"] == "response.completed"

    try:
        run(go())
    finally:
        proxy.stop()
    models = [r["json"]["model"] for r in upstream.requests()]
    if hook:
        assert models == ["rewritten-by-addon"], "the dropped frame must not be bridged, the other one rewritten"
    else:
        assert models == ["drop-me", "gpt-5.5"], "without the hook pass no addon sees bridged client frames"


def test_next_create_right_after_the_terminal_event_while_the_body_still_ends(tmp_path: Path) -> None:
    """Codex sends its next response.create as soon as it reads response.completed; an upstream may still be
    ending that body (a trailing [DONE], the chunked terminator late). The lane is free at the terminal event,
    and the completed response can already be continued."""
    port = free_port()
    bodies: list[dict[str, Any]] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                bodies.append(json.loads(await reader.readexactly(length)))
                rid = f"resp_{len(bodies)}"
                item = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": rid}]}
                events = [{"type": "response.created", "response": {"id": rid}},
                          {"type": "response.output_item.done", "item": item},
                          {"type": "response.completed", "response": {"id": rid, "output": [item]}}]
                body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n" % len(body) + body + b"\r\n")
                await writer.drain()
                await asyncio.sleep(1.5)  # the body ends long after its terminal event
                writer.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    proxy = start_mitmdump(tmp_path, f"http://127.0.0.1:{port}")

    async def go() -> None:
        server = await asyncio.start_server(upstream, "127.0.0.1", port)
        try:
            async with connect(proxy) as ws:
                first = await turn(ws, create("one"))
                assert first[-1]["type"] == "response.completed"
                started = time.monotonic()
                second = await turn(ws, create("two", previous=first[-1]["response"]["id"]))
                assert [e["type"] for e in second] == ["response.created", "response.output_item.done",
                                                       "response.completed"], second
                assert time.monotonic() - started < 1.0, "the second create waited for the first body to end"
                third = await turn(ws, create("three"))  # nothing ([DONE] included) trails into later turns
                assert third[0]["type"] == "response.created"
        finally:
            server.close()

    try:
        run(go())
    finally:
        proxy.stop()
    assert [m["content"][0]["text"] for m in bodies[1]["input"] if m.get("role") in ("user", "assistant")] == [
        "one", "resp_1", "two"], "the continuation carries the history stored at the terminal event"
