"""Lane tagging and steering rules, in memory."""

from __future__ import annotations

import json

import pytest

from codexbridge.responses.conversation import ClientFrameError
from codexbridge.responses.steering import (
    SteerError,
    check_stream_id,
    client_owned,
    required_input,
    steer_input,
    stream_prefix,
    tag,
)


@pytest.mark.parametrize("data", [b'{"type":"x","a":1}', b"{}", b"{ }", b'{"type":"e","s":"}"}'])
def test_tag_adds_stream_id_without_reserialising(data: bytes) -> None:
    out = tag(data, stream_prefix("lane-1"))
    parsed = json.loads(out)
    assert parsed["stream_id"] == "lane-1"
    assert {k: v for k, v in parsed.items() if k != "stream_id"} == json.loads(data)
    assert out.endswith(data[1:]) or data.replace(b" ", b"") == b"{}"


@pytest.mark.parametrize("value", ["a", "A.b-c_9", "x" * 256])
def test_valid_stream_ids(value: str) -> None:
    assert check_stream_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * 257, "a b", "ü", 5, ["a"]])
def test_invalid_stream_ids(value: object) -> None:
    with pytest.raises(ClientFrameError) as e:
        check_stream_id(value)
    assert e.value.code == "invalid_stream_id"


def test_steer_input_rules() -> None:
    target, items = steer_input({"type": "response.steer", "previous_response_id": "r1", "input": "hi"})
    assert target == "r1" and items[0]["role"] == "user"
    for bad in (
        {"type": "response.steer", "previous_response_id": "r1", "input": "hi", "stream_id": "x"},
        {"type": "response.steer", "input": "hi"},
        {"type": "response.steer", "previous_response_id": "r1", "input": []},
        {"type": "response.steer", "previous_response_id": "r1", "input": [{"type": "message", "role": "system", "content": "x"}]},
        {"type": "response.steer", "previous_response_id": "r1", "input": [{"type": "function_call", "call_id": "c"}]},
    ):
        with pytest.raises(SteerError) as e:
            steer_input(bad)
        assert e.value.code == "invalid_input"


def test_required_input_stubs() -> None:
    stubs = required_input([
        {"type": "message", "role": "assistant"},
        {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch"},
        {"type": "mcp_approval_request", "id": "a1"},
    ])
    assert stubs == [
        {"type": "function_call_output", "call_id": "c1", "name": "exec_command"},
        {"type": "custom_tool_call_output", "call_id": "c2"},
        {"type": "mcp_approval_response", "approval_request_id": "a1"},
    ]


@pytest.mark.parametrize(("item", "owned"), [
    ({"type": "function_call", "call_id": "c1"}, True),
    ({"type": "shell_call", "call_id": "c2"}, True),
    ({"type": "mcp_approval_request", "id": "a1"}, True),
    ({"type": "message", "role": "assistant"}, False),
    ({"type": "reasoning", "summary": []}, False),
    ("function_call", False),
])
def test_client_owned_items_are_the_ones_a_steered_cut_never_follows(item: object, owned: bool) -> None:
    assert client_owned(item) is owned
