"""Codex cannot tell it is bridged: the same scripted session three ways, for every Codex version of the matrix.

1. HTTP mode (`supports_websockets = false`) straight to the SSE-only demo upstream: the reference.
2. WebSocket mode through the bridge (a real mitmdump) to the same upstream (another process of the same program:
   the three sessions run at the same time).
3. WebSocket mode straight to the demo upstream speaking the WebSocket mode natively (`--websocket`): how Codex
   behaves over its own WebSocket transport, to tell Codex's transport differences apart from ours.

After normalising ids, times and paths (support.parity), the bridged session's rollout (Codex's own session log),
its stdout/stderr and the POSTs the upstream received must equal the HTTP session's. The only differences
allowed are the named EXCLUSIONS below, each one a difference Codex shows over a native WebSocket too (the test
checks that the native session shows it); any other difference between native and HTTP fails the test too, so
that a new Codex version's own transport differences get documented here before they are excluded.

The versions are CODEXBRIDGE_CODEX_VERSIONS (`./scripts/test --codex "pinned latest oldest"`), else the pinned one;
each test id names the exact version it ran (`latest=0.171.0`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.codex import codex_versions
from support.mitmdump import Mitmdump, posts_through_proxy, start_mitmdump
from support.parity import (
    BRIDGED,
    HTTP,
    NATIVE,
    CodexLeg,
    CodexResult,
    Exclusion,
    Scenario,
    compare,
    explain,
    need_codex,
    normalise_output,
    normalise_requests,
    normalise_rollout,
    request_headers,
    version_label,
    without,
)
from support.upstream import Upstream, start_upstream

pytestmark = pytest.mark.codex

# Differences Codex shows between its own transports (the native WebSocket session shows each of them too).
EXCLUSIONS = {
    "websocket-error-fallback": Exclusion(
        "websocket-error-fallback",
        "After an error it retries over WebSocket (a 5xx, a stream that broke, was cut, failed or went silent) "
        "until stream_max_retries, or at once (a 429), Codex falls back to HTTP for the rest of the session, "
        "says so on stderr and retries there from the start: the upstream gets the WebSocket attempts (bridged: "
        "POSTs) and then HTTP mode's own POSTs, where HTTP mode sends only the latter.",
        re.compile(r"^stderr: warning: Falling back from WebSockets to HTTPS transport"),
    ),
    "accept-encoding": Exclusion(
        "accept-encoding",
        "HTTP-mode Codex 0.171+ asks for compressed answers (accept-encoding: zstd,gzip); its WebSocket upgrade "
        "carries no Accept-Encoding, so the bridge cannot know, and asks for none.",
        re.compile(r"^header accept-encoding: "),
    ),
    # the two below only for the cases that name them (Case.allow): their patterns would hide too much elsewhere
    "websocket-attempt-quota": Exclusion(
        "websocket-attempt-quota",
        "A WebSocket attempt that fails after its (empty) codex.rate_limits event leaves a token_count without "
        "usage in the rollout; a failed HTTP attempt, whose answer headers say the same, leaves none.",
        re.compile(r'^event_msg \{"info": null, "rate_limits": \{"credits": null, .*"primary": null, '
                   r'.*"secondary": null, .*"type": "token_count"\}$'),
    ),
    "websocket-quiet-retry": Exclusion(
        "websocket-quiet-retry",
        "Codex's first retry over WebSocket is silent; over HTTP it prints (and logs) 'Reconnecting... 1/N'.",
        re.compile(r"^stderr: ERROR: Reconnecting\.\.\. 1/|Reconnecting\.\.\. 1/"),
    ),
    "websocket-failed-output": Exclusion(
        "websocket-failed-output",
        "The output a response streamed before its response.failed stays in the rollout and on stderr when it "
        "came over WebSocket (each failed attempt's message); over HTTP Codex drops it.",
        re.compile(r'^(?:stderr: codex|stderr: hi from mock|.*"type": "AgentMessage".*'
                   r'|response_item .*"text": "hi from mock".*)$'),
    ),
}
_ALWAYS = ("websocket-error-fallback", "accept-encoding")


def token_counts(result: CodexResult) -> list[dict[str, Any]]:
    return [item["payload"] for item in result.rollout
            if item.get("type") == "event_msg" and item["payload"].get("type") == "token_count"]


def posts(result: CodexResult) -> list[dict[str, Any]]:
    return [r for r in result.requests if r["method"] == "POST"]


def header(record: dict[str, Any], name: str) -> str | None:
    return next((value for key, value in request_headers(record) if key == name), None)


def expect_quota(result: CodexResult) -> None:
    limits = token_counts(result)[-1]["rate_limits"]
    assert limits["primary"] == {"used_percent": 12.5, "window_minutes": 300, "resets_at": 1900000000}, limits
    assert limits["secondary"]["used_percent"] == 40.0 and limits["credits"]["balance"] == "9.5", limits


def expect_other_family(result: CodexResult) -> None:
    limits = token_counts(result)[-1]["rate_limits"]  # Codex shows the last snapshot it read
    assert limits["limit_id"] == "codex_other" and limits["primary"]["used_percent"] == 55.0, limits


def expect_turn_state(result: CodexResult) -> None:
    sent = [header(r, "x-codex-turn-state") for r in posts(result)]
    assert sent == [None, "ts-abc", None, None], sent  # the turn's follow-up only; not the next turn's requests


def expect_turn_metadata(result: CodexResult) -> None:
    kinds, turns = [], []
    for record in posts(result):
        value = header(record, "x-codex-turn-metadata")
        assert value == record["json"]["client_metadata"]["x-codex-turn-metadata"], "not this request's own"
        meta = json.loads(value)
        kinds.append(meta["request_kind"])
        turns.append(meta["turn_id"])
    assert kinds == ["turn"] * 3 and turns[0] == turns[1] != turns[2], (kinds, turns)


def expect_reasoning(result: CodexResult) -> None:
    assert token_counts(result)[-1]["info"]["last_usage_includes_reasoning"] is True


def expect_compaction(result: CodexResult) -> None:
    inputs = [r["json"]["input"] for r in posts(result)]
    triggers = [i for i, items in enumerate(inputs) if items and items[-1].get("type") == "compaction_trigger"]
    assert triggers, "Codex never asked for a compaction"
    later = inputs[triggers[0] + 1]
    assert any(item.get("type") == "compaction" for item in later), "the next turn does not continue from it"
    assert any(item.get("type") == "compacted" for item in result.rollout)
    assert result.stdout[-1].strip().endswith("hi from mock")


def expect_stdout(text: str) -> Callable[[CodexResult], None]:
    def check(result: CodexResult) -> None:
        assert all(code == 0 for code in result.returncodes), result.stderr
        assert text in result.stdout[-1], result.stdout

    return check


def expect_stderr(text: str, code: int = 0) -> Callable[[CodexResult], None]:
    def check(result: CodexResult) -> None:
        assert result.returncodes[-1] == code and text in result.stderr[-1], result.stderr[-1][-2000:]

    return check


@dataclass(frozen=True)
class Case:
    scenario: Scenario
    expect: Callable[[CodexResult], None]
    # after a fallback, the bridged session's warning (the WebSocket error that ended it) is the native one's
    same_warning: bool = True
    allow: tuple[str, ...] = ()  # EXCLUSIONS beyond _ALWAYS that this case may use


_CLOSED = "stream disconnected before completion: stream closed before response.completed"
_IMPATIENT = (("stream_idle_timeout_ms", 600),)  # Codex gives up on a silent stream after 0.6 s
_QUOTA = ("websocket-attempt-quota",)


CASES = [
    Case(Scenario("text-turn", ("say hi",)), expect_stdout("hi from mock")),
    Case(Scenario("tool-chain", ("run echo",)), expect_stdout("tool said: hello-from-tool")),
    Case(Scenario("quota-headers", ("[[quota]] [[quota_other]] run echo",)),
         lambda r: (expect_other_family(r), expect_stdout("tool said")(r))),
    Case(Scenario("quota-codex-family", ("[[quota]] say hi",)), expect_quota),
    Case(Scenario("turn-state", ("[[turn_state:ts-abc]] run echo", "run echo")), expect_turn_state),
    Case(Scenario("model-reroute", ("[[model:gpt-5.4-mini]] say hi",)),
         expect_stderr("model rerouted: gpt-5.5 -> gpt-5.4-mini")),
    Case(Scenario("reasoning-included", ("[[reasoning_included]] say hi",),
                  upgrade_headers=("x-reasoning-included:true",), prime_bridge=True), expect_reasoning),
    Case(Scenario("turn-metadata", ("run echo", "[[reply:again]] say more")), expect_turn_metadata),
    Case(Scenario("error-429-quota", ("[[error:429]] [[quota]] say hi",)),
         expect_stderr("429 Too Many Requests", code=1)),
    # The failure paths (each directive holds for every retry, so every attempt fails): Codex retries
    # (stream_max_retries = 1), over WebSocket then falls back to HTTP and retries there, as natively.
    Case(Scenario("error-500", ("[[error:500]] say hi",)), expect_stderr("experiencing high demand", code=1)),
    # passing trouble ([[fail_times:1]]: the next attempt succeeds): Codex recovers without a fallback
    Case(Scenario("error-502-once", ("[[error:502]] [[fail_times:1]] say hi",)), expect_stdout("hi from mock"),
         allow=("websocket-quiet-retry",)),
    Case(Scenario("error-503-retry-after", ("[[error:503]] [[retry_after:1]] say hi",)),
         expect_stderr("unexpected status 503 Service Unavailable", code=1)),
    Case(Scenario("stream-truncated", ("[[truncate]] say hi",)), expect_stderr(_CLOSED, code=1), allow=_QUOTA),
    Case(Scenario("stream-truncated-once", ("[[truncate]] [[fail_times:1]] say hi",)), expect_stdout("hi from mock"),
         allow=(*_QUOTA, "websocket-quiet-retry")),
    # a native server that drops the connection shows as "Connection reset without closing handshake" in the
    # fallback warning; the bridge closes the WebSocket (1011) instead, so that line names a close
    Case(Scenario("stream-reset", ("[[reset]] say hi",)), expect_stderr("error decoding response body", code=1),
         same_warning=False, allow=_QUOTA),
    # an `error` event without a status: Codex ignores it; over HTTP the stream then ends and Codex retries at
    # once, a native server leaves the socket open (Codex waits out its idle timeout); the bridge closes it,
    # so bridged Codex retries at once as over HTTP, its fallback warning naming the close
    Case(Scenario("sse-error-event", ("[[sse_error]] say hi",), provider=_IMPATIENT), expect_stderr(_CLOSED, code=1),
         same_warning=False, allow=_QUOTA),
    Case(Scenario("response-failed", ("[[failed]] say hi",)), expect_stderr("completion: mock failure", code=1),
         allow=(*_QUOTA, "websocket-failed-output")),
    Case(Scenario("idle-timeout", ("[[sleep:2]] say hi",), provider=_IMPATIENT),
         expect_stderr("idle timeout waiting for SSE", code=1), allow=_QUOTA),
    Case(Scenario("compaction", ("say hi", "[[reply:second answer]] say more", "third"),
                  config="model_auto_compact_token_limit = 70", provider_name="OpenAI"), expect_compaction),
]


@pytest.fixture(scope="module")
def bridged_upstream(module_tmp: Path) -> Iterator[Upstream]:
    """The bridged leg's own SSE-only upstream (the HTTP leg's runs at the same time): same program, same flags."""
    up = start_upstream(module_tmp)
    yield up
    up.stop()


@pytest.fixture(scope="module")
def bridged_bridge(module_tmp: Path, bridged_upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, bridged_upstream.url)
    yield proxy
    proxy.stop()


def run_native(case: Case, binary: Path, tmp: Path, shared: Upstream) -> tuple[CodexResult, Upstream | None]:
    own = start_upstream(tmp, "--websocket", *(f"--upgrade-header={h}" for h in case.scenario.upgrade_headers)) \
        if case.scenario.upgrade_headers else None
    up = own or shared
    try:
        up.reset()
        result = CodexLeg(binary, up.url + "/v1", True, tmp).run(case.scenario, up.requests)
        assert up.stats()["ws_connections"] > 0, "Codex did not use the native WebSocket"
        return result, own
    finally:
        if own is not None:
            own.stop()


def run_bridged(case: Case, binary: Path, tmp: Path, upstream: Upstream,
                bridge: Mitmdump) -> tuple[CodexResult, CodexResult | None, int]:
    """Through the bridge: a scenario that shows what the bridge learns from an upstream (prime_bridge) gets a
    bridge of its own and runs twice; the second session is the one compared (the first is returned too).
    Also returns the plain POSTs the bridge saw (Codex falling back to HTTP)."""
    own = start_mitmdump(tmp, upstream.url) if case.scenario.prime_bridge else None
    proxy = own or bridge
    try:
        leg = CodexLeg(binary, proxy.base_url, True, tmp)
        first = None
        if own is not None:
            upstream.reset()
            first = leg.run(case.scenario, upstream.requests)
        upstream.reset()
        posts_before = posts_through_proxy(proxy.log)
        result = leg.run(case.scenario, upstream.requests)
        assert upstream.stats()["upgrade_attempts"] == 0, "the upstream saw a WebSocket upgrade"
        return result, first, posts_through_proxy(proxy.log) - posts_before
    finally:
        if own is not None:
            own.stop()


def first_session_limit(reference: CodexResult, first: CodexResult) -> None:
    """The README's remaining limit: before the bridge heard an upstream's answer, its first 101 to that upstream
    cannot say what Codex reads only there (x-reasoning-included), so the first session differs in that alone."""
    pairs = compare(normalise_rollout(reference), normalise_rollout(first))
    assert pairs and all("last_usage_includes_reasoning" in (a or "") + (b or "") for a, b in pairs), \
        explain(pairs, HTTP, "first bridged session")


# the test id carries the exact version each entry runs (`latest=0.171.0`), so the report says which one ran
@pytest.mark.parametrize("version", [pytest.param(v, id=version_label(v)) for v in codex_versions()])
@pytest.mark.parametrize("case", CASES, ids=[c.scenario.name for c in CASES])
def test_bridged_codex_sees_what_http_codex_sees(case: Case, version: str, tmp_path: Path, upstream: Upstream,
                                                  bridged_upstream: Upstream, bridged_bridge: Mitmdump,
                                                  ws_upstream: Upstream) -> None:
    binary = need_codex(version)
    # the three legs share nothing (an upstream each, Codex homes of their own): they run at the same time
    with ThreadPoolExecutor(3) as pool:
        upstream.reset()
        http = pool.submit(CodexLeg(binary, upstream.url + "/v1", False, tmp_path).run, case.scenario,
                           upstream.requests)
        native = pool.submit(run_native, case, binary, tmp_path, ws_upstream)
        bridged = pool.submit(run_bridged, case, binary, tmp_path, bridged_upstream, bridged_bridge)
        results = {HTTP: http.result(), NATIVE: native.result()[0]}
        results[BRIDGED], first, fallback_posts = bridged.result()
    case.expect(results[HTTP])
    if first is not None:
        first_session_limit(results[HTTP], first)
    # Codex stays on the bridged WebSocket, except where it falls back to HTTP over a native WebSocket too (as
    # many POSTs of its own)
    assert fallback_posts == len(posts(results[NATIVE])), "Codex did not stay on the bridged WebSocket"
    case.expect(results[BRIDGED])

    active = [EXCLUSIONS[name] for name in (*_ALWAYS, *case.allow)]
    used: set[str] = set()
    native_shows: set[str] = set()
    failures = []
    for what, normalise in (("rollout", normalise_rollout), ("output", normalise_output)):
        reference = normalise(results[HTTP])
        for leg in (BRIDGED, NATIVE):
            lines = normalise(results[leg])
            for exclusion in active:
                if any(exclusion.pattern.search(line) for line in lines + reference):
                    (used if leg == BRIDGED else native_shows).add(exclusion.name)
            pairs = compare(without(reference, active), without(lines, active))
            if pairs:
                failures.append(f"{what}, {HTTP} vs {leg}:\n{explain(pairs, HTTP, leg)}")

    # the WebSocket error that made Codex fall back, as its warning says it, is the one a native server gives
    fallback = EXCLUSIONS["websocket-error-fallback"].pattern
    warnings = {leg: without([line for line in normalise_output(results[leg]) if fallback.search(line)], [])
                for leg in (BRIDGED, NATIVE)}
    if case.same_warning and warnings[BRIDGED] != warnings[NATIVE]:
        failures.append(f"fallback warning, {NATIVE} vs {BRIDGED}:\n{explain(compare(warnings[NATIVE], warnings[BRIDGED]), NATIVE, BRIDGED)}")

    # where Codex falls back, its bridged session is its native one (but for the warning named above)
    if "websocket-error-fallback" in used:
        skip = [] if case.same_warning else [EXCLUSIONS["websocket-error-fallback"]]
        for what, normalise in (("rollout", normalise_rollout), ("output", normalise_output)):
            pairs = compare(without(normalise(results[NATIVE]), skip), without(normalise(results[BRIDGED]), skip))
            if pairs:
                failures.append(f"{what}, {NATIVE} vs {BRIDGED}:\n{explain(pairs, NATIVE, BRIDGED)}")

    # the POSTs: the bridge's must be HTTP mode's; after a fallback, Codex's own POSTs come on top, as natively
    http_posts = normalise_requests(results[HTTP])
    bridged_posts = normalise_requests(results[BRIDGED])
    native_posts = normalise_requests(results[NATIVE])
    if any(EXCLUSIONS["accept-encoding"].pattern.search(line) for line in http_posts + bridged_posts):
        used.add("accept-encoding")
        handshake = next((r for r in results[NATIVE].requests if r["method"] == "WS"), None)
        if handshake is not None and header(handshake, "accept-encoding") is None:
            native_shows.add("accept-encoding")
    http_count = sum(line.startswith("--- POST") for line in http_posts)
    cut = next((i for i, line in enumerate(bridged_posts) if line == f"--- POST {http_count} /v1/responses"),
               len(bridged_posts))
    extra = bridged_posts[cut:]
    if extra:
        used.add("websocket-error-fallback")
        if native_posts:
            native_shows.add("websocket-error-fallback")
        renumbered = [re.sub(r"^--- POST \d+", "--- POST", line) for line in without(extra, active)]
        native_fallback = [re.sub(r"^--- POST \d+", "--- POST", line)
                           for line in without(native_posts, active)]
        pairs = compare(native_fallback, renumbered)
        if pairs:
            failures.append(f"fallback POSTs, {NATIVE} vs {BRIDGED}:\n{explain(pairs, NATIVE, BRIDGED)}")
    pairs = compare(without(http_posts, active), without(bridged_posts[:cut], active))
    if pairs:
        failures.append(f"upstream POSTs, {HTTP} vs {BRIDGED}:\n{explain(pairs, HTTP, BRIDGED)}")

    unproven = used - native_shows
    assert not unproven, f"exclusions used without the native WebSocket session showing them: {sorted(unproven)}"
    assert not failures, f"Codex {version_label(version)}, {case.scenario.name}:\n" + "\n\n".join(failures)
