"""Plays a recording's client side against a live bridge and compares every frame it gets back."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
import websockets

from codexbridge.recording.schema import REDACTED, Recording
from codexbridge.replay.rules import Normalizer, exchanges, mask_synthetic, turns
from codexbridge.responses.headers import HOP_BY_HOP


@dataclass
class FrameMismatch:
    index: int
    expected: str | None
    actual: str | None


@dataclass
class ClientReplayResult:
    expected: int = 0
    received: list[str] = field(default_factory=list)
    mismatches: list[FrameMismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def explain(self, limit: int = 5) -> str:
        lines = [f"{len(self.mismatches)} mismatching frame(s) of {self.expected} expected, {len(self.received)} received:"]
        for m in self.mismatches[:limit]:
            if m.expected is None:
                lines.append(f"  #{m.index}: unexpected extra frame {m.actual!r:.300}")
            elif m.actual is None:
                lines.append(f"  #{m.index}: missing frame, expected {m.expected!r:.300}")
            else:
                lines.append(f"  #{m.index}: expected {m.expected!r:.300}\n        got      {m.actual!r:.300}")
        return "\n".join(lines)


def handshake_headers(recording: Recording) -> list[tuple[str, str]]:
    """The recorded upgrade headers a client would send again (not the ones the library makes itself)."""
    return [(n, v) for n, v in handshake_headers_of(recording.header.request.headers)
            if not n.lower().startswith("sec-websocket-") and n.lower() not in ("user-agent", "content-type", "accept")]


def learn_synthetic_id(want: str, got: str, ids: dict[str, str]) -> None:
    """A synthetic response id hashes the request, which elision changed: map the recorded one to this run's."""
    try:
        a, b = json.loads(want).get("response") or {}, json.loads(got).get("response") or {}
    except (ValueError, AttributeError):
        return
    if isinstance(a, dict) and isinstance(b, dict) and a.get("id") and b.get("id") and a["id"] != b["id"]:
        ids[a["id"]] = b["id"]


async def replay_client(recording: Recording, ws_url: str, speed: float = 0.0, settle: float = 0.3,
                        frame_timeout: float = 15.0) -> ClientReplayResult:
    """Sends the recorded client frames (at the recorded pace when speed > 0) and checks the answers."""
    normalizer = Normalizer(recording)
    plan = turns(recording)
    expected = [(text, synthetic) for turn in plan for _, text, synthetic in turn.frames]
    result = ClientReplayResult(expected=len(expected))
    ids: dict[str, str] = {}  # recorded synthetic response id -> the one this run produced
    async with websockets.connect(ws_url, additional_headers=handshake_headers(recording), max_size=None,
                                  compression=None, user_agent_header=None) as ws:
        started = time.monotonic()
        t0 = plan[0].client.t if plan and plan[0].client else 0.0
        for turn in plan:
            if turn.client is not None:
                if speed > 0:
                    await asyncio.sleep(max(0.0, (turn.client.t - t0) / speed - (time.monotonic() - started)))
                text = turn.client.text
                for recorded, actual in ids.items():
                    text = text.replace(recorded, actual) if text is not None else None
                await ws.send(text if text is not None else b"")
            for _, want, synthetic in turn.frames:
                try:
                    async with asyncio.timeout(frame_timeout):
                        got = str(await ws.recv())
                except (TimeoutError, websockets.ConnectionClosed):
                    break
                result.received.append(got)
                if synthetic:
                    learn_synthetic_id(want, got, ids)
        try:
            async with asyncio.timeout(settle):
                while True:
                    result.received.append(str(await ws.recv()))
        except (TimeoutError, websockets.ConnectionClosed):
            pass
    for i in range(max(len(expected), len(result.received))):
        exp = expected[i] if i < len(expected) else None
        act = result.received[i] if i < len(result.received) else None
        if exp is None or act is None:
            result.mismatches.append(FrameMismatch(i, exp[0] if exp else None, act))
            continue
        want, synthetic = exp
        got = normalizer.text(act)
        if synthetic:
            for recorded, actual in ids.items():
                got = got.replace(actual, recorded)
            want, got = mask_synthetic(want), mask_synthetic(got)
        if want != got:
            result.mismatches.append(FrameMismatch(i, exp[0], act))
    return result


async def replay_http_client(recording: Recording, base: str) -> ClientReplayResult:
    """For an HTTP+SSE recording: POSTs the recorded body through `base` and compares the streamed body."""
    normalizer = Normalizer(recording)
    result = ClientReplayResult()
    async with httpx.AsyncClient(timeout=30) as client:
        for i, exchange in enumerate(exchanges(recording)):
            want = b"".join(chunk for _, chunk in exchange.chunks).decode("utf-8", "replace")
            result.expected += 1
            headers = [(n, v) for n, v in handshake_headers_of(exchange.request.headers)]
            path = "/" + exchange.request.url.split("/", 3)[3]
            async with client.stream("POST", base.rstrip("/") + path, content=exchange.request.body.encode(),
                                     headers=headers) as response:
                got = (await response.aread()).decode("utf-8", "replace")
            result.received.append(got)
            if normalizer.text(got) != want:
                result.mismatches.append(FrameMismatch(i, want, got))
    return result


def handshake_headers_of(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        key = name.lower()
        if key in HOP_BY_HOP and key not in ("content-type", "accept"):
            continue
        out.append((name, "Bearer replay" if value == REDACTED and key == "authorization" else value))
    return out
