"""Drives `codex app-server` (JSON-RPC over stdio) through several turns on one thread."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from support.codex import Codex


async def _run_thread(codex: Codex, prompts: list[str], timeout: float) -> list[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(codex.home),
        "CODEX_HOME": str(codex.home),
        "MOCK_API_KEY": "sk-test-codexbridge",
        **codex.env,
    }
    proc = await asyncio.create_subprocess_exec(
        codex.binary, "app-server", "--listen", "stdio://",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        cwd=codex.workdir, env=env, limit=1 << 24,
    )
    assert proc.stdin is not None and proc.stdout is not None
    pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
    notes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    next_id = 0

    def send(obj: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(obj) + "\n").encode())

    async def reader() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            msg = json.loads(line)
            if "id" in msg and ("result" in msg or "error" in msg):
                pending.pop(msg["id"]).set_result(msg)
            elif "id" in msg:  # a request from the server (approvals): refuse it
                send({"id": msg["id"], "error": {"code": -32601, "message": "not supported"}})
            else:
                await notes.put(msg)

    async def request(method: str, params: dict[str, Any]) -> dict[str, Any]:
        nonlocal next_id
        next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        pending[next_id] = fut
        send({"id": next_id, "method": method, "params": params})
        result = await fut
        if "error" in result:
            raise RuntimeError(f"{method}: {result['error']}")
        return result["result"]

    read_task = asyncio.create_task(reader())
    answers: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            await request("initialize", {"clientInfo": {"name": "codexbridge-tests", "version": "0"}})
            send({"method": "initialized"})
            thread = (await request("thread/start", {"cwd": str(codex.workdir), "ephemeral": True}))["thread"]
            for text in prompts:
                turn = (await request("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": text}]}))["turn"]
                answer = ""
                while True:
                    note = await notes.get()
                    method, params = note["method"], note.get("params", {})
                    if method == "item/completed" and params["item"].get("type") == "agentMessage":
                        answer = params["item"].get("text", "")
                    if method == "turn/completed" and params["turn"]["id"] == turn["id"]:
                        assert params["turn"]["status"] == "completed", params
                        break
                answers.append(answer)
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        read_task.cancel()
    return answers


def run_thread(codex: Codex, prompts: list[str], timeout: float = 120) -> list[str]:
    """Runs the prompts as consecutive turns of one thread; returns each turn's final answer."""
    return asyncio.run(_run_thread(codex, prompts, timeout))
