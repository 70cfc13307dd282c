"""The official openai SDK's Responses WebSocket (connect, lanes, forks, steering) through a real mitmdump.

Every event any test here receives is validated strictly against the SDK's own class for its type."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import typing
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from openai import AsyncOpenAI, OpenAI
from openai.lib.responses_websocket import AsyncResponsesWebSocketSession, ResponsesWebSocketLimits
from openai.resources.responses.responses import AsyncResponsesConnection, ResponsesConnection
from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent
from openai.types.responses.responses_server_event import ResponsesServerEvent
from pydantic import BaseModel, ConfigDict, ValidationError

from support.mitmdump import Mitmdump, start_mitmdump
from support.upstream import Upstream

LIMITS = ResponsesWebSocketLimits(max_lanes=8, max_events_per_lane=4096, max_events=16384,
                                  max_bytes_per_lane=16 << 20, max_bytes=32 << 20, max_response_bytes=None)


# The SDK's class for each event type of the Responses WebSocket (its `ResponsesServerEvent` union).
SDK_EVENTS: dict[str, type[BaseModel]] = {
    typing.get_args(member.model_fields["type"].annotation)[0]: member
    for member in typing.get_args(typing.get_args(ResponsesServerEvent)[0])
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextKeepalive(_Strict):
    type: Literal["keepalive"]


class ResponseMetadata(_Strict):
    type: Literal["response.metadata"]
    headers: dict[str, str]
    stream_id: str | None = None


class CodexRateLimits(BaseModel):  # Codex's own event; only the fields its parse_rate_limit_event reads are fixed
    model_config = ConfigDict(strict=True)
    type: Literal["codex.rate_limits"]
    metered_limit_name: str | None = None
    limit_name: str | None = None
    rate_limits: dict[str, Any] | None = None
    credits: dict[str, Any] | None = None
    plan_type: str | None = None


# Events the proxy may send that the SDK has no class for (the last two only to Codex clients): checked here.
PROXY_EVENTS: dict[str, type[BaseModel]] = {
    "keepalive": TextKeepalive, "response.metadata": ResponseMetadata, "codex.rate_limits": CodexRateLimits,
}


def validate_event(data: str | bytes) -> str | None:
    """What is wrong with one received event: None when its type's class validates it strictly."""
    event = json.loads(data)
    kind = event.get("type") if isinstance(event, dict) else None
    model = SDK_EVENTS.get(kind) or PROXY_EVENTS.get(kind)  # type: ignore[arg-type]  # None is looked up too: not found
    if model is None:
        return f"no class for event type {kind!r}"
    try:
        model.model_validate(event, strict=True)
    except ValidationError as e:
        return f"{kind}: {e}"
    return None


@pytest.fixture(autouse=True)
def every_event_validates(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Records every event the SDK parses in the test (its connections and lane sessions all parse through
    parse_event), and fails the test when one does not validate strictly."""
    received: list[bytes] = []
    for cls in (AsyncResponsesConnection, ResponsesConnection):
        original = cls.parse_event

        def parse_event(self: Any, data: str | bytes, _original: Any = original) -> Any:
            received.append(data if isinstance(data, bytes) else data.encode())
            return _original(self, data)

        monkeypatch.setattr(cls, "parse_event", parse_event)
    yield received
    problems = [p for p in map(validate_event, received) if p is not None]
    assert received, "the test received no event"
    assert not problems, f"{len(problems)} of {len(received)} events do not validate:\n" + "\n".join(problems[:5])


@pytest.fixture(scope="module")
def sdk_bridge(module_tmp: Path, upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, upstream.url, "codexbridge_max_stored_responses=3", "codexbridge_max_lanes=4")
    yield proxy
    proxy.stop()


@contextlib.asynccontextmanager
async def sdk_session(proxy: Mitmdump) -> AsyncIterator[AsyncResponsesWebSocketSession]:
    """The SDK's lane session on one Responses WebSocket through the bridge."""
    async with AsyncOpenAI(base_url=proxy.base_url, api_key="sk-test") as client:
        async with client.responses.connect() as connection:
            async with AsyncResponsesWebSocketSession(connection, limits=LIMITS) as session:
                yield session


def user(text: str) -> list[dict[str, Any]]:
    return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]


def test_sync_connect_single_turn_and_continuation(sdk_bridge: Mitmdump, upstream: Upstream) -> None:
    client = OpenAI(base_url=sdk_bridge.base_url, api_key="sk-test")
    with client.responses.connect() as conn:
        conn.response.create(model="gpt-5.5", input="say hi")  # no `stream`: implicit in WebSocket mode
        deltas = []
        for event in conn:
            if isinstance(event, ResponseTextDeltaEvent):
                deltas.append(event.delta)
            if event.type in ("response.completed", "error"):
                break
        assert isinstance(event, ResponseCompletedEvent), event
        first = event.response
        assert "".join(deltas) == first.output_text == "hi from mock"
        conn.response.create(model="gpt-5.5", input="[[reply:second answer]] again", previous_response_id=first.id)
        for event in conn:
            if event.type in ("response.completed", "error"):
                break
        assert isinstance(event, ResponseCompletedEvent) and event.response.output_text == "second answer"
    second_input = upstream.requests()[-1]["json"]["input"]
    assert second_input[0]["content"] == [{"type": "input_text", "text": "say hi"}]
    assert second_input[1]["role"] == "assistant" and second_input[-1]["content"][0]["text"].endswith("again")


def test_async_connect_with_final_response(sdk_bridge: Mitmdump) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            lane = session.default
            await lane.send({"type": "response.create", "model": "gpt-5.5", "input": "say hi"})
            first = await lane.get_final_response()
            assert first.status == "completed" and first.output_text == "hi from mock"
            await lane.send({"type": "response.create", "model": "gpt-5.5", "input": "[[reply:two]] x",
                             "previous_response_id": first.id})
            second = await lane.get_final_response()
            assert second.output_text == "two" and second.id != first.id

    asyncio.run(go())


def test_three_lanes_stream_concurrently_tagged_and_complete(sdk_bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            lanes = [session.lane(f"lane-{i}") for i in range(3)]
            t0 = time.monotonic()
            for i, lane in enumerate(lanes):
                await lane.send({"type": "response.create", "model": "gpt-5.5",
                                 "input": user(f"[[deltas:20]] [[pace_ms:50]] [[reply:lane{i}]] go")})

            async def collect(i: int, lane: Any) -> list[tuple[float, Any]]:
                events = []
                while True:
                    event = await lane.recv()
                    events.append((time.monotonic() - t0, event))
                    if event.type in ("response.completed", "error", "response.failed"):
                        return events

            per_lane = await asyncio.gather(*(collect(i, lane) for i, lane in enumerate(lanes)))
            elapsed = time.monotonic() - t0
        for i, events in enumerate(per_lane):
            assert all(getattr(e, "stream_id", None) == f"lane-{i}" for _, e in events), "every event carries its lane"
            assert events[-1][1].type == "response.completed"
            text = "".join(e.delta for _, e in events if e.type == "response.output_text.delta")
            assert text.startswith(f"lane{i} ") and len(text.split()) == 20
        # interleaved: each lane's stream started before the others ended
        starts = [events[0][0] for events in per_lane]
        ends = [events[-1][0] for events in per_lane]
        assert max(starts) < min(ends)
        assert elapsed < 2.2, f"three 1 s streams took {elapsed:.2f}s: they did not run concurrently"

    asyncio.run(go())
    assert len(upstream.requests()) == 3


def test_fork_from_another_lane(sdk_bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            source, fork = session.lane("source"), session.lane("fork")
            await source.send({"type": "response.create", "model": "gpt-5.5", "input": user("root question")})
            root = await source.get_final_response()
            await fork.send({"type": "response.create", "model": "gpt-5.5", "input": user("[[reply:forked]] branch"),
                             "previous_response_id": root.id})
            branch = await fork.get_final_response()
            assert branch.output_text == "forked"
            await source.send({"type": "response.create", "model": "gpt-5.5", "input": user("[[reply:main]] go on"),
                               "previous_response_id": root.id})
            assert (await source.get_final_response()).output_text == "main"

    asyncio.run(go())
    fork_input = upstream.requests()[1]["json"]["input"]
    assert [m.get("role") for m in fork_input] == ["user", "assistant", "user"]
    assert fork_input[0]["content"][0]["text"] == "root question"


def test_evicted_response_is_not_found(sdk_bridge: Mitmdump) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            lane = session.lane("a")
            ids = []
            for i in range(4):  # the bridge keeps 3
                await lane.send({"type": "response.create", "model": "gpt-5.5", "input": user(f"turn {i}")})
                ids.append((await lane.get_final_response()).id)
            await lane.send({"type": "response.create", "model": "gpt-5.5", "input": user("again"),
                             "previous_response_id": ids[0]})
            event = await lane.recv()
            assert event.type == "error"
            assert event.error.code == "previous_response_not_found"
            assert getattr(event, "stream_id", None) == "a"
            await lane.send({"type": "response.create", "model": "gpt-5.5", "input": user("again"),
                             "previous_response_id": ids[-1]})
            assert (await lane.get_final_response()).status == "completed"

    asyncio.run(go())


def test_lane_limit_yields_stream_limit_error(sdk_bridge: Mitmdump) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            for i in range(4):
                lane = session.lane(f"l{i}")
                await lane.send({"type": "response.create", "model": "gpt-5.5", "input": user("hi")})
                assert (await lane.get_final_response()).status == "completed"
            extra = session.lane("one-too-many")
            await extra.send({"type": "response.create", "model": "gpt-5.5", "input": user("hi")})
            event = await extra.recv()
            assert event.type == "error" and event.error.code == "websocket_stream_limit_reached"

    asyncio.run(go())


async def _events_until(lane: Any, kinds: set[str], timeout: float = 15) -> list[Any]:
    events = []
    async with asyncio.timeout(timeout):
        while True:
            events.append(await lane.recv())
            if events[-1].type in kinds:
                return events


async def steer_when(lane: Any, prompt: str, steer: str, at: str, **create: Any) -> tuple[Any, list[Any]]:
    """Starts a response on `lane` and steers it as soon as an event of type `at` arrives; returns its
    `response.created` and the events up to that point."""
    await lane.send({"type": "response.create", "model": "gpt-5.5", "input": user(prompt), **create})
    before = await _events_until(lane, {at})
    await lane.send({"type": "response.steer", "previous_response_id": before[0].response.id, "input": steer})
    return before[0], before


def test_steering_ends_the_target_steered_at_the_commit_point_and_starts_its_successor(
        sdk_bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> str:
        async with sdk_session(sdk_bridge) as session:
            lane = session.lane("steered")
            # steered while its message streams: the commit point is that message's end
            created, before = await steer_when(lane, "[[deltas:10]] [[pace_ms:60]] write slowly",
                                               "[[reply:steered answer]] actually, be brief",
                                               "response.output_text.delta",
                                               tools=[{"type": "function", "name": "lookup", "parameters": {}}],
                                               parallel_tool_calls=False)
            events = before + await _events_until(lane, {"response.incomplete", "response.completed"})
            kinds = [e.type for e in events]
            accepted = events[kinds.index("response.steer.accepted")]
            assert accepted.steer.previous_response_id == created.response.id
            target = events[-1]
            assert target.type == "response.incomplete", "the target ends at the commit point, not at its end"
            assert target.response.id == created.response.id and target.response.status == "incomplete"
            assert target.response.incomplete_details.reason == "steered"
            assert target.response.parallel_tool_calls is False and target.response.tools[0].name == "lookup"
            assert kinds.index("response.steer.accepted") < kinds.index("response.output_item.done")
            assert [item.type for item in target.response.output] == ["message"]
            partial = target.response.output[0].content[0].text
            assert partial.startswith("word1 ") and len(partial.split()) == 10
            successor = await _events_until(lane, {"response.completed"})
            assert successor[0].type == "response.created", "the successor starts with its own response.created"
            assert successor[0].response.id != created.response.id
            assert successor[-1].response.output_text == "steered answer"
            assert all(getattr(e, "stream_id", None) == "steered" for e in events + successor)
            return partial

    partial = asyncio.run(go())
    first, second = upstream.requests()
    sent = second["json"]["input"]
    assert sent[: len(first["json"]["input"])] == first["json"]["input"]
    assert sent[-2]["role"] == "assistant" and sent[-2]["content"][0]["text"] == partial
    assert sent[-1]["content"][0]["text"].endswith("actually, be brief")
    assert second["json"]["tools"] == first["json"]["tools"], "the successor inherits the target's settings"


def test_a_steer_between_output_items_cuts_the_target_at_once(sdk_bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            lane = session.default
            created, _ = await steer_when(lane, "[[sleep:5]] think long", "[[reply:now]] skip that",
                                          "response.created")
            events = await _events_until(lane, {"response.incomplete", "response.completed"}, timeout=4)
            kinds = [e.type for e in events]
            assert kinds[-2:] == ["response.steer.accepted", "response.incomplete"]
            assert not any(k.startswith("response.output_") for k in kinds), "cut before the target's first item"
            target = events[-1].response
            assert target.id == created.response.id and target.incomplete_details.reason == "steered"
            assert target.output == []
            assert upstream.stats()["active_streams"] <= 1, "the target's POST is abandoned"
            successor = await _events_until(lane, {"response.completed", "response.incomplete", "error"})
            assert successor[0].type == "response.created", [e.type for e in successor]
            assert successor[-1].response.output_text == "now", [e.type for e in successor]

    asyncio.run(go())
    first, second = upstream.requests()
    assert second["json"]["input"] == first["json"]["input"] + user("[[reply:now]] skip that")


def test_steering_pending_while_waiting_for_tool_output(sdk_bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            lane = session.lane("tools")
            # steered while the model's tool call streams: a client-owned call is never cut off
            created, before = await steer_when(lane, "[[pace_ms:500]] run echo", "also say thanks",
                                               "response.function_call_arguments.delta")
            events = before + await _events_until(lane, {"response.steer.pending"})
            kinds = [e.type for e in events]
            assert "response.steer.accepted" in kinds and "response.incomplete" not in kinds
            assert kinds.index("response.completed") < kinds.index("response.steer.pending")
            pending = events[-1]
            (stub,) = pending.required_input
            assert stub.type == "function_call_output" and stub.name == "exec_command"
            await lane.send({"type": "response.create", "model": "gpt-5.5",
                             "previous_response_id": created.response.id,
                             "input": [{"type": "function_call_output", "call_id": stub.call_id,
                                        "output": "hello-from-tool"}]})
            final = await lane.get_final_response()
            assert final.output_text == "tool said: hello-from-tool"

    asyncio.run(go())
    follow_up = upstream.requests()[-1]["json"]["input"]
    assert follow_up[-2]["content"][0]["text"] == "also say thanks", "queued steering input goes first"
    assert follow_up[-1]["type"] == "function_call_output"


def test_a_prewarm_echoes_the_requests_settings(sdk_bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            lane = session.default
            tools = [{"type": "function", "name": "lookup", "description": "d", "strict": True,
                      "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}]
            await lane.send({"type": "response.create", "model": "gpt-5.5", "input": [], "generate": False,
                             "instructions": "Be brief.", "tools": tools, "tool_choice": "auto",
                             "parallel_tool_calls": False, "reasoning": {"effort": "low", "summary": "auto"},
                             "store": False})
            created, completed = await _events_until(lane, {"response.completed"})
            for response in (created.response, completed.response):
                assert response.instructions == "Be brief." and response.parallel_tool_calls is False
                assert [t.name for t in response.tools] == ["lookup"] and response.tool_choice == "auto"
                assert response.reasoning.effort == "low" and response.store is False
            assert completed.response.usage.input_tokens_details.cache_write_tokens == 0
            await lane.send({"type": "response.create", "model": "gpt-5.5", "input": "say hi",
                             "previous_response_id": completed.response.id})
            assert (await lane.get_final_response()).output_text == "hi from mock"

    asyncio.run(go())
    assert len(upstream.requests()) == 1, "the prewarm never reaches the upstream"


def test_steering_failures_are_answered(sdk_bridge: Mitmdump) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            lane = session.default
            await lane.send({"type": "response.steer", "previous_response_id": "resp_nope", "input": "hey"})
            failed = (await _events_until(lane, {"response.steer.failed"}))[-1]
            assert failed.error.code == "response_not_found" and failed.steer.input == "hey"
            await lane.send({"type": "response.create", "model": "gpt-5.5", "input": "say hi"})
            done = await lane.get_final_response()
            await lane.send({"type": "response.steer", "previous_response_id": done.id, "input": "late"})
            late = (await _events_until(lane, {"response.steer.failed"}))[-1]
            assert late.error.code == "response_already_completed"

    asyncio.run(go())


def test_errors_and_disconnects_hold_per_lane(sdk_bridge: Mitmdump, upstream: Upstream) -> None:
    async def go() -> None:
        async with sdk_session(sdk_bridge) as session:
            good, bad = session.lane("good"), session.lane("bad")
            await good.send({"type": "response.create", "model": "gpt-5.5",
                             "input": user("[[deltas:10]] [[pace_ms:30]] fine")})
            await bad.send({"type": "response.create", "model": "gpt-5.5", "input": user("[[error:429]] no")})
            error = (await _events_until(bad, {"error"}))[-1]
            assert error.status == 429 and error.stream_id == "bad"
            assert (await good.get_final_response()).status == "completed"
            # two lanes streaming when the client leaves: both upstream requests are cancelled
            for lane in (good, bad):
                await lane.send({"type": "response.create", "model": "gpt-5.5",
                                 "input": user("[[deltas:100]] [[pace_ms:50]] long")})
            await _events_until(good, {"response.output_text.delta"})
            assert upstream.stats()["active_streams"] == 2
        deadline = time.monotonic() + 3
        while upstream.stats()["active_streams"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert upstream.stats()["active_streams"] == 0

    asyncio.run(go())
