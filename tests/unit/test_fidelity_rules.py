"""The rules that make a bridged Codex see what it sees over HTTP: quota, metadata, per-request headers, events."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from openai.types.responses.responses_server_event import ResponsesServerEvent

from codexbridge.responses import steering
from codexbridge.responses.conversation import Conversation
from codexbridge.responses.metadata import UpgradeMemory, answer_events, is_codex_client, metadata_event
from codexbridge.responses.quota import rate_limit_events
from codexbridge.responses.steering import Steer
from codexbridge.responses.synthetic import error_frame, incomplete, synthetic_prewarm
from codexbridge.responses.turn_headers import request_headers, split_client_metadata
from codexbridge.tools.demo_upstream import OTHER_QUOTA_EVENT, OTHER_QUOTA_HEADERS, QUOTA_EVENT, QUOTA_HEADERS

EVENT_CLASSES = {
    typing.get_args(member.model_fields["type"].annotation)[0]: member
    for member in typing.get_args(typing.get_args(ResponsesServerEvent)[0])
}


def strictly_valid(frame: bytes) -> Any:
    """The SDK's own class for the event's type, validated in strict mode (no coercion)."""
    event = json.loads(frame)
    return EVENT_CLASSES[event["type"]].model_validate(event, strict=True)


def snapshot(event: dict[str, Any]) -> tuple[Any, ...]:
    """What Codex's parse_rate_limit_event makes of an event (missing and null are the same to it)."""
    limits = event.get("rate_limits") or {}

    def window(w: dict[str, Any] | None) -> tuple[Any, ...] | None:
        return None if w is None else (float(w["used_percent"]), w.get("window_minutes"), w.get("reset_at"))

    credits = event.get("credits")
    return (event.get("metered_limit_name") or event.get("limit_name") or "codex", window(limits.get("primary")),
            window(limits.get("secondary")),
            None if credits is None else (credits["has_credits"], credits["unlimited"], credits.get("balance")),
            event.get("plan_type"))


# -- quota ----------------------------------------------------------------------------------------


def test_quota_headers_become_the_events_a_native_server_sends() -> None:
    # the demo upstream's hand-written native events are what real Codex reads as it reads these headers over HTTP
    # (tests/e2e/test_codex_parity.py shows it for every Codex version of the matrix)
    events = rate_limit_events(QUOTA_HEADERS)
    assert [snapshot(e) for e in events] == [snapshot(QUOTA_EVENT)]
    events = rate_limit_events([*QUOTA_HEADERS, *OTHER_QUOTA_HEADERS])
    assert [snapshot(e) for e in events] == [snapshot(QUOTA_EVENT), snapshot(OTHER_QUOTA_EVENT)]


def test_without_quota_headers_codex_still_gets_the_empty_codex_snapshot() -> None:
    assert rate_limit_events([("content-type", "text/event-stream")]) == [
        {"type": "codex.rate_limits", "metered_limit_name": "codex"}]
    assert snapshot(rate_limit_events([])[0]) == ("codex", None, None, None, None)


@pytest.mark.parametrize(("headers", "primary"), [
    ([("X-Codex-Primary-Used-Percent", "12.5"), ("x-codex-primary-window-minutes", "60"),
      ("x-codex-primary-reset-at", "1704069000")], (12.5, 60, 1704069000)),
    ([("x-codex-primary-used-percent", "0")], None),  # nothing to say: no window
    ([("x-codex-primary-used-percent", "0"), ("x-codex-primary-window-minutes", "0")], None),
    ([("x-codex-primary-used-percent", "0"), ("x-codex-primary-reset-at", "5")], (0.0, None, 5)),
    ([("x-codex-primary-used-percent", "80"), ("x-codex-primary-window-minutes", "x")], (80.0, None, None)),
    ([("x-codex-primary-used-percent", "inf")], None),
    ([("x-codex-primary-used-percent", "nan")], None),
    ([("x-codex-primary-used-percent", " 5")], None),  # Rust's parse takes no spaces
    ([("x-codex-primary-used-percent", "1_0")], None),  # nor Python's digit separators
    ([("x-codex-primary-used-percent", "1e1")], (10.0, None, None)),
    ([("x-codex-primary-used-percent", "7"), ("x-codex-primary-used-percent", "9")], (7.0, None, None)),  # first
])
def test_quota_windows_are_read_as_codex_reads_them(headers: list[tuple[str, str]],
                                                    primary: tuple[Any, ...] | None) -> None:
    assert snapshot(rate_limit_events(headers)[0])[1] == primary


def test_other_families_and_credits() -> None:
    headers = [("x-codex-secondary-primary-used-percent", "80"), ("x-acme-primary-used-percent", "0"),
               ("x-codex-credits-has-credits", "TRUE"), ("x-codex-credits-unlimited", "0"),
               ("x-codex-credits-balance", "  "), ("x-zeta-primary-used-percent", "3")]
    events = rate_limit_events(headers)
    credits = (True, False, None)
    # codex first; then by id; a family with no window still counts when there are credits (as Codex's does)
    assert [snapshot(e) for e in events] == [
        ("codex", None, None, credits, None), ("acme", None, None, credits, None),
        ("codex_secondary", (80.0, None, None), None, credits, None), ("zeta", (3.0, None, None), None, credits, None)]
    no_credits = rate_limit_events([("x-acme-primary-used-percent", "0")])
    assert [snapshot(e)[0] for e in no_credits] == ["codex"]  # an empty family other than codex is left out
    assert rate_limit_events([("x-codex-credits-has-credits", "yes"), ("x-codex-credits-unlimited", "false")]) == [
        {"type": "codex.rate_limits", "metered_limit_name": "codex"}]


# -- response.metadata and the upgrade -------------------------------------------------------------


def test_metadata_event_carries_what_codex_reads_from_it() -> None:
    headers = [("OpenAI-Model", "gpt-5.4-mini"), ("x-codex-turn-state", "ts-1"), ("x-request-id", "req_1"),
               ("x-reasoning-included", "true")]
    assert metadata_event(headers) == {"type": "response.metadata",
                                       "headers": {"openai-model": "gpt-5.4-mini", "x-codex-turn-state": "ts-1"}}
    assert metadata_event([("x-request-id", "req_1")]) is None
    events = answer_events(headers)
    assert [e["type"] for e in events] == ["response.metadata", "codex.rate_limits"]  # HTTP mode's order
    assert [e["type"] for e in answer_events([])] == ["codex.rate_limits"]


def test_codex_events_go_to_codex_only() -> None:
    assert is_codex_client([("originator", "codex_exec"), ("user-agent", "x")])
    assert is_codex_client([("X-Codex-Turn-Metadata", "{}")])
    assert not is_codex_client([("user-agent", "OpenAI/Python 2.0"), ("authorization", "Bearer x")])


def test_upgrade_memory_repeats_what_the_same_upstream_said_last() -> None:
    memory = UpgradeMemory()
    assert memory.upgrade_headers("http://a") == []  # the first connection to an upstream: nothing known yet
    memory.observe("http://a", [("X-Reasoning-Included", "true"), ("x-models-etag", "e1"), ("openai-model", "m")])
    assert memory.upgrade_headers("http://a") == [("x-reasoning-included", "true"), ("x-models-etag", "e1")]
    assert memory.upgrade_headers("http://b") == []
    memory.observe("http://a", [("x-models-etag", "e2")])  # no longer says it: no longer repeated
    assert memory.upgrade_headers("http://a") == [("x-models-etag", "e2")]
    pinned = UpgradeMemory({"X-Reasoning-Included": "true", "x-models-etag": ""})
    pinned.observe("http://a", [("x-models-etag", "e3")])
    assert pinned.upgrade_headers("http://a") == [("x-reasoning-included", "true")]  # "" leaves it out
    small = UpgradeMemory(max_upstreams=2)
    for host in ("a", "b", "c"):
        small.observe(host, [("x-models-etag", host)])
    assert small.upgrade_headers("a") == [] and small.upgrade_headers("c") == [("x-models-etag", "c")]


# -- per-request headers ---------------------------------------------------------------------------


TURN = '{"request_kind":"turn","turn_id":"t1"}'
HANDSHAKE = [("Authorization", "Bearer sk"), ("x-codex-turn-metadata", '{"request_kind":"prewarm","turn_id":""}'),
             ("x-codex-window-id", "s:0"), ("session-id", "s"), ("x-codex-turn-state", "stale")]


def test_client_metadata_splits_into_the_body_and_headers_http_mode_sends() -> None:
    metadata = {"x-codex-turn-metadata": TURN, "x-codex-window-id": "s:1", "x-codex-turn-state": "ts-1",
                "x-codex-ws-stream-request-start-ms": "1796300420453", "session_id": "s", "turn_id": "t1",
                "ws_request_header_traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "ws_request_header_x_openai_internal_codex_responses_lite": "true"}
    body, headers = split_client_metadata(metadata)
    assert body == {"x-codex-turn-metadata": TURN, "x-codex-window-id": "s:1", "session_id": "s", "turn_id": "t1"}
    assert headers == [("x-codex-turn-metadata", TURN), ("x-codex-window-id", "s:1"), ("x-codex-turn-state", "ts-1"),
                       ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                       ("x-openai-internal-codex-responses-lite", "true")]
    assert split_client_metadata({"x-codex-ws-stream-request-start-ms": "1"}) == (None, [])
    assert split_client_metadata("not an object") == ("not an object", [])
    # a value Codex could not send as a header (a line break, non-ASCII) it leaves out; so does the bridge
    assert split_client_metadata({"x-codex-turn-state": "a\r\nb: c"})[1] == []
    assert split_client_metadata({"x-codex-turn-metadata": '{"cwd":"/tmp/ü"}'})[1] == []


def test_request_headers_replace_the_upgrades_in_place() -> None:
    own = [("x-codex-turn-metadata", TURN), ("x-codex-window-id", "s:1"), ("traceparent", "00-1")]
    assert request_headers(HANDSHAKE, own, True) == [
        ("Authorization", "Bearer sk"), ("x-codex-turn-metadata", TURN), ("x-codex-window-id", "s:1"),
        ("session-id", "s"), ("traceparent", "00-1")]  # the stale turn state of the upgrade is not repeated
    assert request_headers(HANDSHAKE, [], False) == HANDSHAKE  # a client without client_metadata: as before
    with_state = request_headers(HANDSHAKE, [("x-codex-turn-state", "ts-2")], True)
    assert ("x-codex-turn-state", "ts-2") in with_state and ("x-codex-turn-state", "stale") not in with_state


def test_prepared_request_carries_the_http_body_and_own_headers() -> None:
    conv = Conversation()
    frame = {"type": "response.create", "model": "m", "input": [], "generate": False,
             "client_metadata": {"x-codex-turn-metadata": TURN, "x-codex-ws-stream-request-start-ms": "1",
                                 "x-codex-turn-state": "ts"}}
    prepared = conv.prepare(frame)
    assert prepared.body["client_metadata"] == {"x-codex-turn-metadata": TURN}
    assert prepared.own_headers == [("x-codex-turn-metadata", TURN), ("x-codex-turn-state", "ts")]
    assert prepared.has_client_metadata
    bare = conv.prepare({"type": "response.create", "model": "m", "input": "hi"})
    assert "client_metadata" not in bare.body and bare.own_headers == [] and not bare.has_client_metadata


# -- events the proxy makes ------------------------------------------------------------------------


SDK_BODY = {"model": "gpt-5.5", "input": [], "stream": True, "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "lookup", "description": "d", "strict": True,
                       "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}],
            "tool_choice": "auto", "parallel_tool_calls": False, "temperature": 0.2, "metadata": {"k": "v"},
            "reasoning": {"effort": "low", "summary": "auto"}, "text": {"verbosity": "low"}, "store": False}


def test_synthetic_prewarm_is_strictly_valid_and_echoes_the_settings() -> None:
    created, completed = (strictly_valid(f) for f in synthetic_prewarm(SDK_BODY, "resp_cb_1", "resp_prev"))
    for response in (created.response, completed.response):
        assert response.id == "resp_cb_1" and response.model == "gpt-5.5"
        assert response.instructions == "Be brief." and response.temperature == 0.2
        assert response.parallel_tool_calls is False and response.tool_choice == "auto"
        assert [t.name for t in response.tools] == ["lookup"] and response.metadata == {"k": "v"}
        assert response.reasoning.effort == "low" and response.text.verbosity == "low"
        assert response.previous_response_id == "resp_prev" and response.store is False
    assert created.response.status == "in_progress" and created.response.usage is None
    assert completed.response.status == "completed" and completed.response.usage.input_tokens_details.cache_write_tokens == 0
    bare = [strictly_valid(f) for f in synthetic_prewarm({"model": "m", "input": []}, "resp_cb_2")]
    assert bare[1].response.tools == [] and bare[1].response.tool_choice == "auto"
    assert bare[1].response.parallel_tool_calls is True and bare[1].response.previous_response_id is None


def test_every_other_event_the_proxy_makes_is_strictly_valid() -> None:
    output = [{"id": "msg_1", "type": "message", "role": "assistant", "status": "incomplete",
               "content": [{"type": "output_text", "text": "part", "annotations": []}]}]
    steered = strictly_valid(incomplete(SDK_BODY, "resp_1", output, 7, "steered", previous_response_id="resp_0"))
    assert steered.response.status == "incomplete" and steered.response.incomplete_details.reason == "steered"
    assert steered.response.output[0].content[0].text == "part" and steered.sequence_number == 7
    error = strictly_valid(error_frame(400, "previous_response_not_found", "Previous response not found.",
                                       param="previous_response_id"))
    assert error.status == 400 and error.error.code == "previous_response_not_found"
    strictly_valid(error_frame(502, "upstream_unreachable", "Upstream unreachable: refused"))
    steer = Steer("steer_cb_1", "resp_1", [{"type": "message", "role": "user", "content": "more"}], "lane-a", "more")
    assert strictly_valid(steering.accepted(steer, 3)).stream_id == "lane-a"
    assert strictly_valid(steering.failed("response_not_found", "gone", "resp_1", "more", 0)).error.code == \
        "response_not_found"
    stub = steering.required_input([{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}])
    assert strictly_valid(steering.pending(steer, stub, 9)).required_input[0].call_id == "c1"


def test_the_demo_upstreams_failure_directives_used_by_the_parity_cases() -> None:
    from codexbridge.tools.demo_upstream import events_for, healed, plan_for, planned_error

    def body(text: str) -> dict[str, Any]:
        return {"model": "m", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]}

    plan = plan_for(body("[[error:503]] [[retry_after:1.5]] hi"))
    status, error, headers = planned_error(plan.error or 0, [("x-request-id", "req_1")], plan.retry_after)
    assert status == 503 and error["error"]["type"] == "server_error" and ("retry-after", "1.5") in headers
    assert ("retry-after", "1") not in planned_error(500, [])[2]  # only when asked (a 429 has its own)
    events = list(events_for(plan_for(body("[[reset]] hi")), 1, "m", 1))
    assert events[-1] is None and [e["type"] for e in events if isinstance(e, dict)][-1] == "response.output_text.delta"
    assert plan_for(body("[[reset]] hi")).reset and not plan_for(body("[[truncate]] hi")).reset
    passing = plan_for(body("[[truncate]] [[failed]] [[fail_times:1]] hi"))
    assert passing.fail_times == 1 and passing.prompt.endswith(" hi")
    assert (healed(passing).truncate, healed(passing).end, healed(passing).text) == (False, "completed", passing.text)
