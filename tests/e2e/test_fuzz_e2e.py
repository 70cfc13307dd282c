"""Hostile client frames from hypothesis, through a real mitmdump with the bridge, while a witness session streams.

Arbitrary JSON (deep, wide, lone surrogates, either escaping), arbitrary bytes as text and binary frames, fragmented
at random points with pings between the fragments, and frames near and over the size limit. Each frame must get
what the README promises (a 400 error frame, an answer, a response, nothing for unknown event types, or the close
1007 for invalid UTF-8), the connection must stay usable, mitmproxy must never crash, and the witness session on
another connection must receive every frame of every turn it asks for."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from codexbridge.responses.conversation import MAX_JSON_DEPTH
from codexbridge.responses.events import TERMINAL_EVENTS
from support.mitmdump import Mitmdump, start_mitmdump
from support.rawframes import BINARY, TEXT, Closed, RawClient, fragments, frame
from support.upstream import Upstream

MAX_FRAME = 1 << 20  # the bridge's codexbridge_max_frame_bytes in this test
WITNESS_DELTAS = 300


@pytest.fixture(scope="module")
def fuzz_bridge(module_tmp: Path, upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, upstream.url, f"codexbridge_max_frame_bytes={MAX_FRAME}")
    yield proxy
    proxy.stop()


# -- what the README promises for a frame ------------------------------------------------------


def depth_of(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def expected(payload: bytes, opcode: int) -> str:
    """error (one 400 error frame), close1007, create (a 4xx error frame or a response), answer (one frame),
    or ignored (nothing)."""
    if opcode == BINARY or len(payload) > MAX_FRAME:
        return "error"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "close1007"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "error"
    if depth_of(obj) > MAX_JSON_DEPTH:
        return "error"
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate escape
        return "error"
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return "error"
    if obj["type"] == "response.create":
        model = obj.get("model")
        return "create" if isinstance(model, str) and model else "error"
    return "answer" if obj["type"] == "response.steer" else "ignored"


# -- hostile frames ----------------------------------------------------------------------------

# any code point, lone surrogates included, and a few that JSON escapes or that need two UTF-16 units
texts = st.text(st.characters(codec=None, exclude_categories=()) | st.sampled_from("\ud800\udfff\udc00\U0001f600\x00\\\""),
                max_size=40)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(texts, inner, max_size=6),
                           max_leaves=40)
models = st.sampled_from(["fuzz-model"]) | json_values
creates = st.fixed_dictionaries(
    {"type": st.just("response.create"), "model": models},
    optional={"input": json_values | texts, "previous_response_id": json_values, "stream_id": json_values,
              "generate": json_values, "metadata": json_values, "tools": json_values, "instructions": texts},
)
others = st.fixed_dictionaries({"type": st.sampled_from(["response.steer", "response.cancel", "x"]) | texts},
                                optional={"previous_response_id": json_values, "input": json_values})


def serialise(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")  # raw surrogates: not UTF-8


def nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    inner = opener * depth + "1" + closer * depth
    return ('{"type":"response.create","model":"fuzz-model","input":[' + inner + "]}").encode()


json_frames = st.builds(serialise, json_values | others, st.booleans())
create_frames = st.builds(serialise, creates, st.booleans())
deep_frames = st.builds(nested, st.integers(min_value=MAX_JSON_DEPTH - 3, max_value=120_000),
                        st.sampled_from(["[", '{"a":']))
byte_frames = st.binary(max_size=300)
payloads = st.one_of(json_frames, create_frames, create_frames, deep_frames, byte_frames)


@st.composite
def hostile(draw: st.DrawFn) -> tuple[bytes, int, list[int], bool]:
    payload = draw(payloads)
    opcode = draw(st.sampled_from([TEXT, TEXT, TEXT, BINARY]))
    cuts = draw(st.lists(st.integers(min_value=0, max_value=max(0, len(payload))), max_size=4))
    return payload, opcode, cuts, draw(st.booleans())


# -- the witness -------------------------------------------------------------------------------


class Witness(threading.Thread):
    """Streams paced turns on its own connection until stopped; checks every event of every turn."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.turns = 0
        self.frames = 0
        self.failure: str | None = None

    def run(self) -> None:
        client = RawClient.connect(self.port)
        try:
            while not self.stop.is_set():
                client.send_json({"type": "response.create", "model": "witness", "input": [
                    {"type": "message", "role": "user", "content": [
                        {"type": "input_text", "text": f"[[deltas:{WITNESS_DELTAS}]] [[pace_ms:2]] witness"}]}]})
                events: list[dict[str, Any]] = []
                while not events or events[-1]["type"] not in TERMINAL_EVENTS:
                    events.append(client.next_json(timeout=30))
                self.frames += len(events)
                seqs = [e["sequence_number"] for e in events]
                deltas = [e for e in events if e["type"] == "response.output_text.delta"]
                if events[-1]["type"] != "response.completed" or seqs != list(range(len(events))) \
                        or len(deltas) != WITNESS_DELTAS:
                    self.failure = f"turn {self.turns}: {len(events)} events, {len(deltas)} deltas, last {events[-1]}"
                    return
                self.turns += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.failure = f"turn {self.turns}: {type(e).__name__}: {e}"
        finally:
            client.close()


# -- the test ----------------------------------------------------------------------------------


class Victim:
    """The fuzzed connection, reopened only after a close the README documents."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client = RawClient.connect(port)
        self.sentinels = 0
        self.examples = 0
        self.outcomes: dict[str, int] = {}

    def reconnect(self) -> None:
        self.client.close()
        self.client = RawClient.connect(self.port)

    def throw(self, payload: bytes, opcode: int, cuts: list[int], pings: bool) -> None:
        want = expected(payload, opcode)
        self.examples += 1
        self.outcomes[want] = self.outcomes.get(want, 0) + 1
        client = self.client
        pongs = len(client.pongs)
        client.send(fragments(payload, opcode, cuts, pings) if cuts else frame(payload, opcode))
        if want == "close1007":
            message = client.next(timeout=10)
            assert isinstance(message, Closed) and message.code == 1007, message
            self.reconnect()
            return
        self.sentinels += 1
        sentinel = f"sentinel-{self.sentinels}"
        client.send_json({"type": "response.steer", "previous_response_id": sentinel, "input": "x"})
        got: list[dict[str, Any]] = []
        seen_sentinel = False
        while not seen_sentinel or (want == "create" and not (got and got[-1]["type"] in TERMINAL_EVENTS)):
            event = client.next_json(timeout=20)
            if event.get("type") == "response.steer.failed" and event["steer"]["previous_response_id"] == sentinel:
                seen_sentinel = True
            else:
                got.append(event)
        if want == "error":
            assert len(got) == 1 and got[0]["type"] == "error" and got[0]["status"] == 400, got
        elif want == "answer":
            assert len(got) == 1 and got[0]["type"] in ("response.steer.failed", "error"), got
            assert got[0].get("status", 400) == 400
        elif want == "create":
            if got[0]["type"] == "error":
                assert len(got) == 1 and 400 <= got[0]["status"] < 500, got
                self.outcomes["create answered 4xx"] = self.outcomes.get("create answered 4xx", 0) + 1
            else:
                assert got[0]["type"] == "response.created" and got[-1]["type"] in TERMINAL_EVENTS, got[-1]
                assert all(e.get("error", {}).get("code") != "bridge_error" for e in got if isinstance(e, dict))
        else:
            assert got == [], got
        if pings and any(0 < c < len(payload) for c in cuts):
            assert len(client.pongs) > pongs, "a ping between fragments was not answered"


def test_hostile_frames_get_their_answer_and_break_nothing(fuzz_bridge: Mitmdump) -> None:
    witness = Witness(fuzz_bridge.port)
    witness.start()
    victim = Victim(fuzz_bridge.port)

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(hostile())
    @example((nested(100_000, "["), TEXT, [], False))  # RecursionError in json.loads on main
    @example((b'{"type":"response.create","model":"m","input":"\\ud800"}', TEXT, [], False))  # UnicodeEncodeError
    @example((b'{"type":"response.create","model":"m","generate":false,"input":"\\udfff"}', TEXT, [], False))
    @example((b'{"type":"response.steer","previous_response_id":"r","input":["\\ud800"]}', TEXT, [5, 9], True))
    @example((b'{"type":"response.create","model":"m","previous_response_id":"\\ud800"}', TEXT, [], False))
    @example((json.dumps({"type": "response.create", "model": "m", "input": "x" * (MAX_FRAME - 100)}).encode(),
              TEXT, [1000, 500_000], True))  # huge, within the limit: a response
    @example((json.dumps({"type": "response.create", "model": "m", "input": "x" * MAX_FRAME}).encode(),
              TEXT, [], False))  # over the limit: frame_too_large
    @example((b"[" * (MAX_FRAME - 10), BINARY, [7, 70_000], True))
    @example((b"\xff\xfe not utf-8", TEXT, [3], True))
    def throw(case: tuple[bytes, int, list[int], bool]) -> None:
        try:
            victim.throw(*case)
        except BaseException:
            victim.reconnect()  # the next example starts on a healthy connection, whatever this one did
            raise

    try:
        throw()
        # still usable: a plain turn on the fuzzed connection
        victim.client.send_json({"type": "response.create", "model": "m", "input": "after the fuzz"})
        events = [victim.client.next_json()]
        while events[-1]["type"] not in TERMINAL_EVENTS:
            events.append(victim.client.next_json())
        assert events[-1]["type"] == "response.completed"
    finally:
        witness.stop.set()
        witness.join(timeout=60)
        victim.client.close()
    print(f"fuzz: {victim.examples} frames {victim.outcomes}; witness: {witness.turns} turns, {witness.frames} frames")
    assert witness.failure is None, witness.failure
    assert witness.turns >= 1
    log = fuzz_bridge.log
    assert "has crashed" not in log
    assert "stage=bridge_error" not in log, "a hostile frame is not an internal error"
    assert victim.outcomes.get("error", 0) > 20 and victim.outcomes.get("create", 0) > 5
