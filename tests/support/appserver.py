"""Drives `codex app-server` (JSON-RPC over stdio): one connection (AppServer), and several turns on one thread."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from types import TracebackType
from typing import Any

from support.codex import Codex


class AppServer:
    """A running `codex app-server`, initialized: requests answered by id, notifications in `notes`, requests from the
    server (approvals) refused."""

    def __init__(self, codex: Codex) -> None:
        self.codex = codex
        self.notes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    async def __aenter__(self) -> AppServer:
        codex = self.codex
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(codex.home), "CODEX_HOME": str(codex.home),
               "MOCK_API_KEY": "sk-test-codexbridge", **codex.env}
        self._proc = await asyncio.create_subprocess_exec(
            codex.binary, "app-server", "--listen", "stdio://",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            cwd=codex.workdir, env=env, limit=1 << 24,
        )
        self._read_task = asyncio.create_task(self._reader())
        await self.request("initialize", {"clientInfo": {"name": "codexbridge-tests", "version": "0"}})
        self.send({"method": "initialized"})
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        proc = self._proc
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self._read_task.cancel()

    def send(self, obj: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write((json.dumps(obj) + "\n").encode())

    async def _reader(self) -> None:
        assert self._proc.stdout is not None
        async for line in self._proc.stdout:
            msg = json.loads(line)
            if "id" in msg and ("result" in msg or "error" in msg):
                self._pending.pop(msg["id"]).set_result(msg)
            elif "id" in msg:  # a request from the server (approvals): refuse it
                self.send({"id": msg["id"], "error": {"code": -32601, "message": "not supported"}})
            else:
                await self.notes.put(msg)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        key = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        self.send({"id": key, "method": method, "params": params})
        result = await fut
        if "error" in result:
            raise RuntimeError(f"{method}: {result['error']}")
        return result["result"]

    async def start_thread(self) -> dict[str, Any]:
        return (await self.request("thread/start", {"cwd": str(self.codex.workdir), "ephemeral": True}))["thread"]


async def _run_thread(codex: Codex, prompts: list[str], timeout: float) -> list[str]:
    answers: list[str] = []
    async with asyncio.timeout(timeout), AppServer(codex) as server:
        thread = await server.start_thread()
        for text in prompts:
            turn = (await server.request("turn/start", {"threadId": thread["id"],
                                                        "input": [{"type": "text", "text": text}]}))["turn"]
            answer = ""
            while True:
                note = await server.notes.get()
                method, params = note["method"], note.get("params", {})
                if method == "item/completed" and params["item"].get("type") == "agentMessage":
                    answer = params["item"].get("text", "")
                if method == "turn/completed" and params["turn"]["id"] == turn["id"]:
                    assert params["turn"]["status"] == "completed", params
                    break
            answers.append(answer)
    return answers


def run_thread(codex: Codex, prompts: list[str], timeout: float = 120) -> list[str]:
    """Runs the prompts as consecutive turns of one thread; returns each turn's final answer."""
    return asyncio.run(_run_thread(codex, prompts, timeout))
