"""Codex's response.interrupt through a real mitmdump: a user steering a turn of a "Responses Lite" model.

Codex sends `{"type":"response.interrupt","response_id":...,"mode":"discard_partial_items"}` when its user steers
a running turn of such a model (the Codex model catalog's `use_responses_lite`), waits for the response's terminal
event and continues from it. The bridge ends the response as the server does: `response.incomplete` with reason
"interrupted" and the output items done so far (the message still streaming is discarded), its POST abandoned.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from support.appserver import AppServer
from support.codex import Codex
from support.mitmdump import Mitmdump
from support.upstream import Upstream

pytestmark = pytest.mark.codex

LITE_MODEL = "gpt-6-sol"  # use_responses_lite in the catalog of the Codex versions tested (gpt-5.5 is not)


async def steer_mid_turn(codex: Codex, prompt: str, steer: str, timeout: float = 90) -> list[dict[str, Any]]:
    """One app-server turn steered by the user at its first streamed text; returns the turn's notifications."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout), AppServer(codex) as server:
        thread = await server.start_thread()
        turn = (await server.request("turn/start", {"threadId": thread["id"],
                                                    "input": [{"type": "text", "text": prompt}]}))["turn"]
        while "delta" not in (note := await server.notes.get())["method"].lower():
            seen.append(note)
        await server.request("turn/steer", {"threadId": thread["id"], "expectedTurnId": turn["id"],
                                            "input": [{"type": "text", "text": steer}]})
        while not ((note := await server.notes.get())["method"] == "turn/completed"
                   and note["params"]["turn"]["id"] == turn["id"]):
            seen.append(note)
        seen.append(note)
    return seen


def test_codex_interrupt_ends_the_response_and_codex_continues_from_it(codex: Codex, bridge: Mitmdump,
                                                                       upstream: Upstream) -> None:
    codex.configure(bridge.base_url, websockets=True)
    config = codex.home / "config.toml"
    config.write_text(config.read_text().replace('model = "gpt-5.5"', f'model = "{LITE_MODEL}"', 1))
    notes = asyncio.run(steer_mid_turn(codex, "[[deltas:400]] [[pace_ms:25]] a long answer",
                                       "[[reply:steered answer]] stop and say so"))
    done = notes[-1]["params"]["turn"]
    assert done["status"] == "completed", done
    messages = [n["params"]["item"].get("text") for n in notes
                if n["method"] == "item/completed" and n["params"]["item"].get("type") == "agentMessage"]
    assert messages[-1] == "steered answer"
    posts = [r["json"] for r in upstream.requests() if r["method"] == "POST"]
    assert len(posts) == 2, "the interrupted response and Codex's continuation"
    follow_up = posts[1]["input"]
    assert follow_up[-1]["content"][0]["text"] == "[[reply:steered answer]] stop and say so"
    assert follow_up[: len(posts[0]["input"])] == posts[0]["input"], "continued from the interrupted response"
    # the message that was streaming is discarded (ignoring the interrupt would have let it finish, all 400 words)
    assert not any(item.get("role") == "assistant" for item in follow_up[len(posts[0]["input"]):]), follow_up[-3:]
