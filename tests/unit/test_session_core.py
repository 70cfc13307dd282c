"""BridgeSession and ResponseRun in memory: a fake client channel, a fake upstream, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import Bridge, completed_events, created_event, in_loop, message_item, turns, user
from openai.types.responses.responses_server_event import ResponseWsIncomplete

from codexbridge.bridge.upstream import UpstreamError, UpstreamTimeout
from codexbridge.responses.conversation import ClientFrameError

# -- one response ------------------------------------------------------------------------------


@in_loop
async def test_a_response_is_relayed_in_order_and_can_be_continued() -> None:
    b = Bridge()
    b.create("first")
    exchange = b.upstream.last
    assert exchange.body["stream"] is True and exchange.body["input"] == [user("first")]
    exchange.complete("r1", "hello")
    await turns()
    assert b.client.types == ["response.created", "response.output_text.delta", "response.output_item.done",
                              "response.completed"]
    assert not any(synthetic for _, synthetic in b.client.sent)  # relayed, not made by the bridge
    assert b.client.in_flight == [True, False]

    b.create("second", previous_response_id="r1")
    assert len(b.upstream.exchanges) == 2
    assert b.upstream.last.body["input"] == [user("first"), message_item("hello"), user("second")]
    assert "previous_response_id" not in b.upstream.last.body


@in_loop
async def test_a_second_create_on_the_default_lane_is_refused_while_one_runs() -> None:
    b = Bridge()
    b.create("one")
    b.create("two")
    assert len(b.upstream.exchanges) == 1
    [error] = b.client.errors()
    assert error["status"] == 400 and error["error"]["code"] == "response_already_in_progress"


# -- lanes, FIFO, limits -----------------------------------------------------------------------


@in_loop
async def test_lanes_stream_at_once_and_their_events_are_tagged() -> None:
    b = Bridge()
    b.create("a", stream_id="lane-a")
    b.create("b", stream_id="lane-b")
    assert len(b.upstream.exchanges) == 2
    a, bb = b.upstream.exchanges
    assert "stream_id" not in a.body  # a WebSocket-only key: not sent upstream
    bb.complete("rb")
    a.complete("ra")
    await turns()
    assert [e["response"]["id"] for e in b.client.events if e["type"] == "response.completed"] == ["rb", "ra"]
    assert {e.get("stream_id") for e in b.lane_events("lane-a")} == {"lane-a"}
    assert [e["type"] for e in b.lane_events("lane-b")][-1] == "response.completed"
    assert len(b.lane_events("lane-a")) == len(b.lane_events("lane-b")) == 4


@in_loop
async def test_creates_on_one_lane_run_one_after_another_in_order() -> None:
    b = Bridge()
    for text in ("1", "2", "3"):
        b.create(text, stream_id="lane")
    assert [e.body["input"] for e in b.upstream.exchanges] == [[user("1")]]
    b.upstream.last.complete("r1")
    await turns()
    assert [e.body["input"] for e in b.upstream.exchanges] == [[user("1")], [user("2")]]
    b.upstream.last.complete("r2")
    await turns()
    assert [e.body["input"] for e in b.upstream.exchanges] == [[user("1")], [user("2")], [user("3")]]
    assert not b.client.errors()


@in_loop
async def test_max_active_bounds_responses_streaming_at_once() -> None:
    b = Bridge(max_active=2)
    for lane in ("a", "b", "c"):
        b.create(lane, stream_id=lane)
    assert len(b.upstream.exchanges) == 2
    first = b.upstream.exchanges[0]
    first.answer("ra")  # its terminal event frees its lane, not its slot: the body goes on
    await turns()
    assert len(b.upstream.exchanges) == 2
    first.end()
    await turns()
    assert len(b.upstream.exchanges) == 3
    assert b.upstream.last.body["input"] == [user("c")]


@in_loop
async def test_max_queued_refuses_creates_beyond_it() -> None:
    b = Bridge(max_queued=1)
    b.create("runs", stream_id="x")
    b.create("waits", stream_id="x")
    b.create("refused", stream_id="x")
    [error] = b.client.errors()
    assert error["status"] == 429 and error["error"]["code"] == "too_many_queued_responses"
    assert error["stream_id"] == "x"
    b.upstream.last.complete("r1")
    await turns()
    assert [e.body["input"] for e in b.upstream.exchanges] == [[user("runs")], [user("waits")]]


@in_loop
async def test_max_lanes_refuses_another_stream_id() -> None:
    b = Bridge(max_lanes=1)
    b.create("a", stream_id="a")
    b.create("b", stream_id="b")
    assert len(b.upstream.exchanges) == 1
    assert b.client.errors()[0]["error"]["code"] == "websocket_stream_limit_reached"


# -- settling, the store, forks ----------------------------------------------------------------


@in_loop
async def test_a_response_settles_at_its_terminal_event_while_its_body_still_ends() -> None:
    b = Bridge()
    b.create("first")
    first = b.upstream.last
    first.answer("r1", "one")  # the body has not ended yet
    await turns()
    b.create("next", previous_response_id="r1")  # what Codex does as soon as it sees response.completed
    assert not b.client.errors()
    assert len(b.upstream.exchanges) == 2
    assert b.upstream.last.body["input"] == [user("first"), message_item("one"), user("next")]
    first.end()
    b.upstream.last.complete("r2")
    await turns()
    assert not b.client.errors()


@in_loop
async def test_the_oldest_stored_response_is_evicted() -> None:
    b = Bridge(max_responses=2)
    b.create("1")
    b.upstream.last.complete("r1")
    await turns()
    for n in (2, 3):
        b.create(str(n), previous_response_id=f"r{n - 1}")
        b.upstream.last.complete(f"r{n}")
        await turns()
    b.create("again", previous_response_id="r1")
    [error] = b.client.errors()
    assert error["status"] == 400 and error["error"]["code"] == "previous_response_not_found"
    assert len(b.upstream.exchanges) == 3
    b.create("fine", previous_response_id="r3")
    assert len(b.upstream.exchanges) == 4


@in_loop
async def test_a_failed_continuation_on_the_same_lane_evicts_its_parent_a_fork_does_not() -> None:
    b = Bridge()
    b.create("base", stream_id="a")
    b.upstream.last.complete("r1")
    await turns()
    b.create("fork", stream_id="b", previous_response_id="r1")  # continued from another lane: a fork
    assert b.upstream.last.body["input"][:2] == [user("base"), message_item("done")]
    b.upstream.last.respond(500, "application/json", b'{"error":{"type":"server_error","code":"boom","message":"x"}}')
    await turns()
    b.create("again", stream_id="a", previous_response_id="r1")  # the fork's failure left r1 in place
    assert [e["error"]["code"] for e in b.client.errors()] == ["boom"]
    b.upstream.last.respond(500, "application/json", b'{"error":{"type":"server_error","code":"boom","message":"x"}}')
    await turns()
    b.create("gone", stream_id="a", previous_response_id="r1")
    assert [e["error"]["code"] for e in b.client.errors()] == ["boom", "boom", "previous_response_not_found"]


# -- steering ----------------------------------------------------------------------------------


def item_added(item: dict[str, Any], index: int = 0, sequence: int = 1) -> dict[str, Any]:
    return {"type": "response.output_item.added", "sequence_number": sequence, "output_index": index, "item": item}


def item_done(item: dict[str, Any], index: int = 0, sequence: int = 3) -> dict[str, Any]:
    return {"type": "response.output_item.done", "sequence_number": sequence, "output_index": index, "item": item}


@in_loop
async def test_a_steer_between_output_items_ends_the_target_steered_at_once_and_starts_its_successor() -> None:
    b = Bridge()
    run = await b.started()
    b.steer("r1", "faster")
    accepted, steered = b.client.events[-2:]
    assert accepted["type"] == "response.steer.accepted" and accepted["steer"]["previous_response_id"] == "r1"
    assert accepted["sequence_number"] == 1
    assert steered["type"] == "response.incomplete" and steered["sequence_number"] == 1
    response = steered["response"]
    assert response["id"] == "r1" and response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "steered"} and response["output"] == []
    assert response["model"] == "gpt-test" and response["tools"] == []  # complete, the request's settings echoed
    ResponseWsIncomplete.model_validate(steered, strict=True)
    assert run.conn.closed, "the target's POST is abandoned at the commit point"
    assert len(b.upstream.exchanges) == 2
    assert b.upstream.last.body["input"] == [user("task"), user("faster")]
    run.events(*completed_events("r1", "late")[1:])  # what the cut upstream still sends goes nowhere
    b.upstream.last.complete("r2", "brief")
    await turns()
    assert b.client.types[-5:] == ["response.incomplete", "response.created", "response.output_text.delta",
                                   "response.output_item.done", "response.completed"]
    assert b.client.events[-4]["response"]["id"] == "r2"
    assert not b.client.errors()
    b.create("go on", previous_response_id="r1")  # the steered target can be continued too
    assert b.upstream.last.body["input"] == [user("task"), user("go on")]


@in_loop
async def test_a_steer_during_an_output_item_commits_when_that_item_is_done() -> None:
    b = Bridge(max_active=1)
    message = {"id": "msg_1", **message_item("partial")}
    run = await b.started()
    run.events(item_added({**message, "content": []}),
               {"type": "response.output_text.delta", "sequence_number": 2, "delta": "partial"})
    b.steer("r1", "faster")
    assert b.client.types[-1] == "response.steer.accepted" and len(b.upstream.exchanges) == 1
    # the item's end, and what the upstream sent behind it in the same read: only the item's end goes out
    run.events(item_done(message), item_added(message, 1, 4),
               {"type": "response.completed", "sequence_number": 5, "response": {"id": "r1", "status": "completed"}})
    await turns()
    types = b.client.types
    assert types[types.index("response.steer.accepted"):] == ["response.steer.accepted", "response.output_item.done",
                                                               "response.incomplete"]
    steered = b.client.events[-1]
    assert steered["sequence_number"] == 4 and steered["response"]["output"] == [message]
    assert steered["response"]["incomplete_details"] == {"reason": "steered"}
    assert run.conn.closed and len(b.upstream.exchanges) == 2  # the active slot went to the successor
    assert b.upstream.last.body["input"] == [user("task"), message, user("faster")]


@in_loop
async def test_steering_input_for_a_response_waiting_on_a_tool_goes_before_the_clients_continuation() -> None:
    b = Bridge()
    call = {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"}
    run = await b.started()
    run.events(item_added({**call, "arguments": ""}))
    b.steer("r1", "also")
    run.events(*completed_events("r1", item=call)[1:])  # a client-owned call is never cut off: the target completes
    run.end()
    await turns()
    assert "response.incomplete" not in b.client.types
    pending = b.client.events[-1]
    assert pending["type"] == "response.steer.pending"
    assert pending["required_input"] == [{"type": "function_call_output", "call_id": "c1", "name": "exec_command"}]
    assert len(b.upstream.exchanges) == 1  # no successor: the client owns the tool result
    output = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    b.frame({"type": "response.create", "model": "gpt-test", "previous_response_id": "r1", "input": [output]})
    assert b.upstream.last.body["input"] == [user("task"), call, user("also"), output]


@in_loop
async def test_a_steer_after_a_client_owned_call_waits_for_the_end_even_between_items() -> None:
    b = Bridge()
    call = {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"}
    run = await b.started()
    run.events(item_added(call), item_done(call, sequence=2))
    b.steer("r1", "also")
    assert b.client.types[-1] == "response.steer.accepted" and not run.conn.closed
    run.events({"type": "response.completed", "sequence_number": 3,
                "response": {"id": "r1", "status": "completed", "output": [call]}})
    await turns()
    assert b.client.types[-2:] == ["response.completed", "response.steer.pending"]


@pytest.mark.parametrize(("target", "code"), [("nope", "response_not_found"), ("r1", "response_already_completed")])
@in_loop
async def test_steering_a_response_that_is_not_running_fails(target: str, code: str) -> None:
    b = Bridge()
    b.create("task")
    b.upstream.last.complete("r1")
    await turns()
    b.steer(target)
    failed = b.client.events[-1]
    assert failed["type"] == "response.steer.failed" and failed["error"]["code"] == code
    assert len(b.upstream.exchanges) == 1


@in_loop
async def test_steering_input_fails_when_its_response_does_not_complete() -> None:
    b = Bridge()
    run = await b.started()
    run.events(item_added(message_item("x")))
    b.steer("r1")
    run.fail(UpstreamError("reset by peer"))
    await turns()
    assert b.client.types[-2:] == ["error", "response.steer.failed"]
    assert b.client.events[-1]["error"]["code"] == "response_not_active"
    assert len(b.upstream.exchanges) == 1


@in_loop
async def test_codex_interrupt_ends_the_response_at_once_without_its_streaming_item() -> None:
    b = Bridge()
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": []}
    run = await b.started()
    run.events(item_added(reasoning), item_done(reasoning, sequence=2), item_added(message_item("partial"), 1, 3),
               {"type": "response.output_text.delta", "sequence_number": 4, "delta": "partial"})
    b.frame({"type": "response.interrupt", "response_id": "r1", "mode": "discard_partial_items"})
    ended = b.client.events[-1]
    assert ended["type"] == "response.incomplete" and ended["sequence_number"] == 5
    assert ended["response"]["incomplete_details"] == {"reason": "interrupted"}
    assert ended["response"]["output"] == [reasoning], "the message still streaming is discarded"
    # complete as the SDK's class wants it, but for the reason: Codex's own ("Responses Lite"), not in the SDK's set
    ResponseWsIncomplete.model_validate({**ended, "response": {**ended["response"], "incomplete_details": None}},
                                        strict=True)
    assert run.conn.closed and len(b.upstream.exchanges) == 1  # no successor: Codex continues itself
    run.events({"type": "response.completed", "sequence_number": 9, "response": {"id": "r1"}})
    await turns()
    assert b.client.types[-1] == "response.incomplete"
    b.create("steered", previous_response_id="r1")
    assert not b.client.errors()
    assert b.upstream.last.body["input"] == [user("task"), reasoning, user("steered")]


@pytest.mark.parametrize("frame", [
    {"type": "response.interrupt", "response_id": "nope", "mode": "discard_partial_items"},
    {"type": "response.interrupt", "response_id": "r1", "mode": "keep_partial_items"},
])
@in_loop
async def test_an_interrupt_the_bridge_cannot_apply_is_dropped(frame: dict[str, Any]) -> None:
    b = Bridge()
    run = await b.started()
    sent = len(b.client.sent)
    b.frame(frame)
    assert len(b.client.sent) == sent and not run.conn.closed  # an error event would end Codex's turn
    run.events(*completed_events("r1")[1:])
    await turns()
    assert b.client.types[-1] == "response.completed"


# -- the client leaves -------------------------------------------------------------------------


@in_loop
async def test_a_client_leaving_cancels_its_responses() -> None:
    b = Bridge()
    b.create("task", stream_id="a")
    b.create("queued", stream_id="a")
    run = b.upstream.last
    run.start()
    await turns()
    sent = len(b.client.sent)
    b.client.leaves()
    b.session.on_client_closed()
    await turns()
    assert b.session.closed.is_set()
    assert run.conn.done.done() or b.upstream.released  # the upstream request was given up
    run.events(*completed_events("r1")[1:])
    await turns()
    assert len(b.client.sent) == sent and len(b.upstream.exchanges) == 1  # nothing more, the queued one dropped


@in_loop
async def test_with_drain_a_client_leaving_lets_the_upstream_run_to_its_end() -> None:
    b = Bridge(on_disconnect="drain")
    run = await b.started()
    b.client.leaves()
    b.session.on_client_closed()
    await turns()
    assert not b.session.closed.is_set()  # still reading the upstream
    run.events(*completed_events("r1")[1:])
    run.end()
    await turns()
    assert b.session.closed.is_set()
    assert b.upstream.released == [run.conn]  # read to its end: back to the pool
    assert b.client.types == ["response.created"]


class Outcomes:
    """The metrics addon's view: what the session says of each response's end."""

    def __init__(self) -> None:
        self.ended: list[tuple[str | None, bool]] = []

    def response_ended(self, run: Any, client_gone: bool) -> None:
        self.ended.append((run.tracker.terminal, client_gone))


@in_loop
async def test_a_client_that_leaves_after_its_answer_is_not_client_gone_though_the_read_is_cancelled() -> None:
    b = Bridge()
    b.session.meter = meter = Outcomes()
    run = await b.started()
    run.events(*completed_events("r1")[1:])  # the terminal event went out; the upstream body is not over yet
    await turns()
    b.client.leaves()
    b.session.on_client_closed()
    await turns()
    assert meter.ended == [("response.completed", False)]


@pytest.mark.parametrize("on_disconnect", ["cancel", "drain"])
@in_loop
async def test_a_client_that_leaves_before_the_terminal_event_is_client_gone_even_when_drained(
        on_disconnect: str) -> None:
    b = Bridge(on_disconnect=on_disconnect)
    b.session.meter = meter = Outcomes()
    run = await b.started()
    b.client.leaves()
    b.session.on_client_closed()
    await turns()
    if on_disconnect == "drain":
        run.events(*completed_events("r1")[1:])
        run.end()
        await turns()
    assert meter.ended == [("response.completed" if on_disconnect == "drain" else None, True)]


@in_loop
async def test_a_client_closing_in_the_same_read_as_its_create_ends_the_session() -> None:
    b = Bridge()
    b.create("task")
    b.session.on_client_closed()  # the response's task is cancelled before it ever ran
    await turns()
    assert b.session.closed.is_set() and not b.session.runs
    assert b.client.in_flight == [True, False]


@in_loop
async def test_a_write_to_a_gone_client_ends_the_session() -> None:
    b = Bridge()
    b.create("task")
    b.client.gone = True  # the socket went away; the layer has not said so yet
    b.upstream.last.start()
    await turns()
    assert b.session.client_gone and b.session.closed.is_set()


# -- upstream failures -------------------------------------------------------------------------


def _fail_head(exchange: Any) -> None:
    exchange.fail(UpstreamError("connection refused"))


def _time_out(exchange: Any) -> None:
    exchange.fail(UpstreamTimeout("no answer"))


def _answer_401(exchange: Any) -> None:
    exchange.respond(401, "application/json", b'{"error":{"type":"invalid_request_error","code":"bad_key","message":"no"}}')


def _answer_json(exchange: Any) -> None:
    exchange.respond(200, "application/json", b"{}")


def _break_mid_stream(exchange: Any) -> None:
    exchange.start()
    exchange.fail(UpstreamError("reset by peer"))


def _go_silent(exchange: Any) -> None:
    exchange.start()
    exchange.fail(UpstreamTimeout("silent"))


def _end_early(exchange: Any) -> None:
    exchange.start()
    exchange.end()


@pytest.mark.parametrize(("fail", "status", "code"), [
    (_fail_head, 502, "upstream_unreachable"),
    (_time_out, 504, "upstream_timeout"),
    (_answer_401, 401, "bad_key"),
    (_answer_json, 502, "upstream_not_streaming"),
    (_break_mid_stream, 502, "upstream_stream_error"),
    (_go_silent, 504, "upstream_timeout"),
    (_end_early, 502, "upstream_stream_truncated"),
])
@in_loop
async def test_an_upstream_failure_before_the_terminal_event_ends_the_response_with_an_error(fail: Any, status: int,
                                                                                              code: str) -> None:
    b = Bridge()
    b.create("task", stream_id="lane")
    fail(b.upstream.last)
    await turns()
    [error] = b.client.errors()
    assert (error["status"], error["error"]["code"], error["stream_id"]) == (status, code, "lane")
    assert b.client.sent[-1][1] is True  # made by the bridge
    b.create("next", stream_id="lane")  # the lane is free again
    assert len(b.upstream.exchanges) == 2


@in_loop
async def test_an_upstream_failure_after_the_terminal_event_is_not_reported() -> None:
    b = Bridge()
    b.create("task")
    run = b.upstream.last
    run.answer("r1")
    run.fail(UpstreamError("reset after the end"))
    await turns()
    assert not b.client.errors()
    assert b.client.types[-1] == "response.completed"
    b.create("next", previous_response_id="r1")  # stored all the same
    assert not b.client.errors() and len(b.upstream.exchanges) == 2


@in_loop
async def test_a_slow_client_pauses_the_upstream_until_it_has_read() -> None:
    b = Bridge()
    b.create("task")
    run = b.upstream.last
    run.respond()
    b.client.congested_now = True
    run.events(created_event("r1"))
    await turns()
    assert run.conn.paused
    b.client.reads_everything()
    await turns()
    assert not run.conn.paused


# -- frames answered by the bridge itself ------------------------------------------------------


@in_loop
async def test_a_prewarm_is_answered_without_the_upstream_and_can_be_continued() -> None:
    b = Bridge()
    b.create("warm", generate=False)
    assert not b.upstream.exchanges
    assert b.client.types == ["response.created", "response.completed"]
    assert all(synthetic for _, synthetic in b.client.sent)
    response_id = b.client.events[-1]["response"]["id"]
    assert response_id.startswith("resp_cb_")
    b.create("go", previous_response_id=response_id)
    assert b.upstream.last.body["input"] == [user("warm"), user("go")]


@in_loop
async def test_a_prewarm_queued_on_a_busy_lane_is_answered_after_the_response_before_it() -> None:
    b = Bridge()
    b.create("task", stream_id="a")
    b.create("warm", stream_id="a", generate=False)
    assert b.client.sent == []
    b.upstream.last.complete("r1")
    await turns()
    assert b.client.types[-2:] == ["response.created", "response.completed"]
    assert b.client.events[-1]["stream_id"] == "a" and b.client.events[-1]["response"]["id"].startswith("resp_cb_")
    assert len(b.upstream.exchanges) == 1


@pytest.mark.parametrize(("frame", "code"), [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_request"),
    ('{"type": 5}', "invalid_request"),
    ('{"type": "response.create", "input": []}', "missing_required_parameter"),
    ('{"type": "response.create", "model": "m", "stream_id": "a b"}', "invalid_stream_id"),
    ('{"type": "response.create", "model": "m", "input": 5}', "invalid_type"),
    ('{"type": "response.create", "model": "m", "previous_response_id": "unknown"}', "previous_response_not_found"),
])
@in_loop
async def test_an_invalid_client_frame_is_answered_with_a_400_error_frame(frame: str, code: str) -> None:
    b = Bridge()
    b.frame(frame)
    [error] = b.client.errors()
    assert (error["status"], error["error"]["code"]) == (400, code)
    assert b.client.sent[0][1] is True
    assert not b.upstream.exchanges
    b.create("still usable")
    assert len(b.upstream.exchanges) == 1


@in_loop
async def test_a_frame_the_glue_rejected_is_answered_with_a_400_error_frame() -> None:
    b = Bridge()
    b.session.on_client_error(ClientFrameError("binary_frame", "Binary frames are not supported."))
    [error] = b.client.errors()
    assert (error["status"], error["error"]["code"]) == (400, "binary_frame")


@in_loop
async def test_an_unknown_client_event_is_ignored() -> None:
    b = Bridge()
    b.frame({"type": "response.something_new"})
    assert b.client.sent == [] and not b.upstream.exchanges
