"""History rules: continuation rebuilds exactly the input Codex would have sent over HTTP."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexbridge.responses.conversation import (
    ClientFrameError,
    Conversation,
    ResponseTracker,
    validate_client_frame,
)


def msg(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def create(inputs: list[Any], previous: str | None = None, **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "response.create", "model": "gpt-5.5", "store": False, "input": inputs, **extra}
    if previous:
        frame["previous_response_id"] = previous
    return frame


def run_response(conv: Conversation, frame: dict[str, Any], rid: str, outputs: list[Any]) -> list[Any]:
    prepared = conv.prepare(frame)
    tracker = ResponseTracker(prepared.full_input)
    tracker.observe({"type": "response.created", "response": {"id": rid}})
    for item in outputs:
        tracker.observe({"type": "response.output_item.done", "item": item})
    tracker.observe({"type": "response.completed", "response": {"id": rid, "output": outputs}})
    conv.remember(rid, tracker.history)
    return prepared.body["input"]


def test_body_drops_ws_only_fields_and_forces_stream() -> None:
    conv = Conversation()
    p = conv.prepare(create([msg("user", "hi")], generate=True, tools=[], stream=False))
    assert set(p.body) == {"model", "store", "input", "tools", "stream"}
    assert p.body["stream"] is True
    assert list(p.body)[:3] == ["model", "store", "input"]


def test_prewarm_then_turn_then_tool_output_equals_http_inputs() -> None:
    conv = Conversation()
    base = msg("developer", "instructions")
    pre = conv.prepare(create([base], generate=False))
    assert pre.generate is False
    conv.remember("resp_1", pre.full_input)
    call = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "exec_command", "arguments": "{}"}
    turn_input = run_response(conv, create([msg("user", "run echo")], "resp_1"), "resp_2", [call])
    assert turn_input == [base, msg("user", "run echo")]
    out = {"type": "function_call_output", "call_id": "c1", "output": "hello"}
    answer = msg("assistant", "tool said: hello")
    follow = run_response(conv, create([out], "resp_2"), "resp_3", [answer])
    assert follow == [base, msg("user", "run echo"), call, out]
    again = conv.prepare(create([msg("user", "again")], "resp_3")).body["input"]
    assert again == [base, msg("user", "run echo"), call, out, answer, msg("user", "again")]


def test_unknown_previous_response_is_not_found() -> None:
    with pytest.raises(ClientFrameError) as e:
        Conversation().prepare(create([], "resp_nope"))
    assert e.value.code == "previous_response_not_found" and e.value.status == 400


def test_failed_response_is_not_continuable_and_eviction_is_oldest_first() -> None:
    conv = Conversation(max_responses=2)
    for i in range(3):
        run_response(conv, create([msg("user", str(i))]), f"r{i}", [])
    assert "r0" not in conv and "r1" in conv and "r2" in conv
    conv.prepare(create([], "r1"))  # touching r1 makes r2 the oldest
    run_response(conv, create([msg("user", "x")]), "r3", [])
    assert "r1" in conv and "r2" not in conv


def test_string_input_continues_as_a_user_message() -> None:
    conv = Conversation()
    assert conv.prepare(create("hello")).body["input"] == "hello"  # type: ignore[arg-type]
    run_response(conv, create("hello"), "r1", [])  # type: ignore[arg-type]
    assert conv.prepare(create("more", "r1")).body["input"] == [msg("user", "hello"), msg("user", "more")]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ([], "invalid_request"),
        ("x", "invalid_request"),
        ({"model": "m"}, "invalid_request"),
        ({"type": "response.create"}, "missing_required_parameter"),
        ({"type": "response.create", "model": ""}, "missing_required_parameter"),
    ],
)
def test_invalid_frames(frame: Any, code: str) -> None:
    with pytest.raises(ClientFrameError) as e:
        validate_client_frame(frame)
    assert e.value.code == code


def test_unknown_event_types_validate() -> None:
    assert validate_client_frame({"type": "response.processed"})["type"] == "response.processed"


items = st.lists(st.builds(msg, st.sampled_from(["user", "developer"]), st.text(max_size=5)), max_size=4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(items, items), min_size=1, max_size=6))
def test_delta_chain_equals_full_resend(turns: list[tuple[list[Any], list[Any]]]) -> None:
    """Sending only deltas with previous_response_id yields the same upstream inputs as full resends."""
    conv = Conversation()
    full: list[Any] = []
    previous = None
    for n, (new_items, outputs) in enumerate(turns):
        sent = run_response(conv, create(copy.deepcopy(new_items), previous), f"r{n}", copy.deepcopy(outputs))
        full = full + new_items
        assert sent == full
        full = full + outputs
        previous = f"r{n}"
