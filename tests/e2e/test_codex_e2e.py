"""The real Codex CLI over WebSocket through a real mitmdump bridge, against an SSE-only upstream.

Every scenario runs twice: through the bridge with `supports_websockets = true`, and straight
to the upstream over HTTP. The model-visible `input` of each upstream POST must be the same.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from codexbridge.replay.rules import canonical
from support.appserver import run_thread
from support.codex import Codex
from support.mitmdump import Mitmdump, posts_through_proxy
from support.upstream import Upstream

pytestmark = pytest.mark.codex


def inputs(upstream: Upstream) -> list[Any]:
    return [canonical(r["json"]["input"]) for r in upstream.requests() if r["method"] == "POST"]


def both_ways(codex: Codex, bridge: Mitmdump, upstream: Upstream, scenario: Any) -> tuple[Any, Any, list[Any], list[Any]]:
    posts_before = posts_through_proxy(bridge.log)
    upgrades_before = bridge.log.count("<< 101")
    codex.configure(bridge.base_url, websockets=True)
    log_before = len(bridge.log)
    ws_result = scenario()
    bridge.session_log = bridge.log[log_before:]
    bridge.upgrades_seen = bridge.log.count("<< 101") - upgrades_before
    ws_inputs = inputs(upstream)
    assert upstream.stats()["upgrade_attempts"] == 0
    assert posts_through_proxy(bridge.log) == posts_before, "Codex fell back to HTTP"
    upstream.reset()
    codex.configure(upstream.url + "/v1", websockets=False)
    http_result = scenario()
    http_inputs = inputs(upstream)
    return ws_result, http_result, ws_inputs, http_inputs


def test_one_shot_exec(codex: Codex, bridge: Mitmdump, upstream: Upstream) -> None:
    ws, http, ws_inputs, http_inputs = both_ways(codex, bridge, upstream, lambda: codex.exec("say hi"))
    for result in (ws, http):
        assert result.returncode == 0, result.stderr
        assert "hi from mock" in result.stdout
    assert len(ws_inputs) == 1
    assert ws_inputs == http_inputs


def test_tool_call_and_follow_up(codex: Codex, bridge: Mitmdump, upstream: Upstream) -> None:
    ws, http, ws_inputs, http_inputs = both_ways(codex, bridge, upstream, lambda: codex.exec("run echo"))
    for result in (ws, http):
        assert result.returncode == 0, result.stderr
        assert "tool said: hello-from-tool" in result.stdout
    assert len(ws_inputs) == 2
    assert ws_inputs[1][-1]["type"] == "function_call_output"
    assert ws_inputs[1][-2]["type"] == "function_call"
    assert ws_inputs == http_inputs


def test_second_turn_on_the_same_thread(codex: Codex, bridge: Mitmdump, upstream: Upstream) -> None:
    def scenario() -> list[str]:
        return run_thread(codex, ["say hi", "[[reply:hello again]] say hi again"])

    ws, http, ws_inputs, http_inputs = both_ways(codex, bridge, upstream, scenario)
    assert ws == http == ["hi from mock", "hello again"]
    assert bridge.upgrades_seen == 1, "both turns must share one WebSocket"
    creates = re.findall(r"stage=response_create lane=\S+ previous_response_id=(\S+) new_items=(\d+)", bridge.session_log)
    assert len(creates) == 3, creates  # prewarm, turn 1, turn 2
    assert creates[0][0] == "None"
    assert creates[2][0].startswith("resp_") and creates[2][1] == "1", "turn 2 must be a one-item delta"
    assert len(ws_inputs) == 2
    assert ws_inputs == http_inputs
    assert ws_inputs[1][: len(ws_inputs[0])] == ws_inputs[0]
