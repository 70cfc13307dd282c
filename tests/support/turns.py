"""Responses turns over a WebSocket test client: a response.create, and every frame up to its terminal event."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from support.rawws import RawWebSocket

TERMINAL_FRAME = re.compile(r'\{"type":"(response\.(completed|failed|incomplete)|error)"')


def create(text: str, model: str = "m") -> dict[str, Any]:
    return {"type": "response.create", "model": model,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]}


async def turn(ws: RawWebSocket, text: str, timeout: float = 15) -> list[str]:
    """Sends one response.create and returns every frame up to its terminal event, as received."""
    await ws.send_json(create(text))
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.messages.get()
            assert isinstance(frame, str)
            frames.append(frame)
            if TERMINAL_FRAME.match(frame):
                return frames
