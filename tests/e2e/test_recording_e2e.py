"""Recording through a real mitmdump: complete files, no secrets, survives kill -9, never breaks a session."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from codexbridge.recording.schema import load
from codexbridge.tools.procs import child_pids, free_port
from support import BIN
from support.mitmdump import start_mitmdump
from support.processes import start_process
from support.upstream import Upstream

CANARY = "sk-canaryQ7f3Z9xLmW2"
CANARY_COOKIE = "canarycookieV8k2"
CANARY_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJlY2FuYXJ5"


def create(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "response.create", "model": "m", **extra,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]}


async def until_terminal(ws: Any) -> list[dict[str, Any]]:
    events = []
    async with asyncio.timeout(15):
        while True:
            events.append(json.loads(await ws.recv()))
            if events[-1]["type"] in ("response.completed", "error", "response.failed"):
                return events


def recordings(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def test_canary_secrets_never_reach_a_recording_or_the_log(module_tmp: Path, upstream: Upstream) -> None:
    rec_dir = module_tmp / "rec-canary"
    proxy = start_mitmdump(module_tmp, upstream.url, f"codexbridge_record={rec_dir}")
    headers = {
        "Authorization": f"Bearer {CANARY}",
        "Cookie": f"session={CANARY_COOKIE}",
        "api-key": CANARY,
        "x-api-key": CANARY,
        "OpenAI-Organization": "org-visible",
    }

    async def go() -> None:
        async with websockets.connect(proxy.ws_url, additional_headers=headers) as ws:
            await ws.send(json.dumps(create(f"my key is {CANARY} and token {CANARY_JWT}", generate=False)))
            await until_terminal(ws)
            await ws.send(json.dumps(create(f"[[reply:the key {CANARY} again]] echo it")))
            events = await until_terminal(ws)
            assert CANARY in "".join(e.get("delta", "") for e in events), "the client itself sees the real text"

    try:
        asyncio.run(go())
        body = {"model": "m", "stream": True, "input": [{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": f"[[reply:http {CANARY}]] {CANARY}"}]}]}
        with httpx.stream("POST", f"{proxy.base_url}/responses", json=body, headers=headers, timeout=10) as r:
            assert CANARY in r.read().decode()
    finally:
        proxy.stop()
    files = recordings(rec_dir)
    assert len(files) == 2, files
    modes = {load(str(f)).header.mode for f in files}
    assert modes == {"bridge", "http"}
    for f in files:
        text = f.read_text()
        for secret in (CANARY, CANARY_COOKIE, CANARY_JWT, "canaryQ7f3"):
            assert secret not in text, f"{secret} leaked into {f.name}"
        assert "<redacted>" in text
        assert "org-visible" in text, "ordinary headers stay readable"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert load(str(f)).complete
    for secret in (CANARY, CANARY_COOKIE, "canaryQ7f3"):
        assert secret not in proxy.log


def test_recording_has_every_kind_of_event(module_tmp: Path, upstream: Upstream) -> None:
    rec_dir = module_tmp / "rec-kinds"
    proxy = start_mitmdump(module_tmp, upstream.url, f"codexbridge_record={rec_dir}",
                           "codexbridge_ping_interval=2", "codexbridge_ping_timeout=1")

    async def go() -> None:
        async with websockets.connect(proxy.ws_url) as ws:
            await ws.send(json.dumps(create("base", generate=False)))
            pre = await until_terminal(ws)
            await ws.send(json.dumps(create("[[deltas:3]] [[chunk:9]] hi", previous_response_id=pre[-1]["response"]["id"])))
            await until_terminal(ws)
            await asyncio.sleep(2.6)  # one idle ping, answered by the client
            await ws.send(json.dumps(create("[[error:429]]")))
            await until_terminal(ws)

    try:
        asyncio.run(go())
    finally:
        proxy.stop()
    (f,) = recordings(rec_dir)
    rec = load(str(f))
    assert rec.header.mode == "bridge" and rec.header.upstream.endswith("/v1/responses")
    kinds = [e.kind for e in rec.events]
    for kind in ("client_frame", "to_client", "upstream_request", "upstream_response", "upstream_chunk",
                 "upstream_end", "ping", "pong", "close", "complete"):
        assert kind in kinds, kind
    assert kinds[-1] == "complete"
    times = [e.t for e in rec.events]
    assert times == sorted(times)
    synthetic = [e for e in rec.events if e.kind == "to_client" and e.synthetic]
    assert json.loads(synthetic[0].frames[0])["type"] == "response.created"  # the prewarm
    chunks = [e for e in rec.events if e.kind == "upstream_chunk"]
    assert any(len(c.text or "") == 9 for c in chunks), "raw chunking is kept"
    req = next(e for e in rec.events if e.kind == "upstream_request")
    assert json.loads(req.body)["stream"] is True


def wait_for_workers(workers: list[int]) -> None:
    """The recording worker outlives a killed proxy: it drains the spool, then exits."""
    assert workers, "the recording worker was running"
    for _ in range(600):
        if not any(Path(f"/proc/{pid}").exists() for pid in workers):
            return
        time.sleep(0.05)
    raise AssertionError("the recording worker did not finish within 30 s of the kill")


def test_kill_9_leaves_a_readable_file_up_to_the_last_event(module_tmp: Path, upstream: Upstream) -> None:
    rec_dir = module_tmp / "rec-kill"
    proxy = start_mitmdump(module_tmp, upstream.url, f"codexbridge_record={rec_dir}")
    received: list[str] = []
    workers: list[int] = []

    async def go() -> None:
        ws = await websockets.connect(proxy.ws_url)
        await ws.send(json.dumps(create("[[deltas:200]] [[pace_ms:20]] x")))
        async with asyncio.timeout(15):
            while len(received) < 30:
                received.append(await ws.recv())
        workers.extend(child_pids(proxy.proc.pid))
        os.kill(proxy.proc.pid, signal.SIGKILL)
        proxy.proc.wait()
        try:
            async with asyncio.timeout(5):
                while True:
                    received.append(await ws.recv())
        except (websockets.ConnectionClosed, TimeoutError):
            pass

    asyncio.run(go())
    wait_for_workers(workers)
    (f,) = recordings(rec_dir)
    rec = load(str(f))
    assert not rec.complete
    recorded = [frame for e in rec.events if e.kind == "to_client" for frame in e.frames]
    assert recorded[: len(received)] == received, "every frame the client got is in the file, in order"
    assert len(recorded) >= len(received)


def test_kill_9_under_load_keeps_every_frame_the_clients_received(module_tmp: Path) -> None:
    """10 paced and 10 bursting sessions recording, then SIGKILL of mitmdump: every frame any client got is in its
    session's recording, in order (the recording worker outlives the proxy and drains what it was given)."""
    port = free_port()
    bench_upstream = start_process([str(BIN / "python"), "-m", "codexbridge.tools.bench_servers", "--port", str(port)],
                                   port, module_tmp / "bench-upstream.log")
    rec_dir = module_tmp / "rec-kill-load"
    proxy = start_mitmdump(module_tmp, f"http://127.0.0.1:{port}", f"codexbridge_record={rec_dir}")
    received: dict[str, list[str]] = {}
    workers: list[int] = []

    async def session(name: str, deltas: int, pace_ms: int) -> None:
        frames = received[name] = []
        try:
            async with websockets.connect(proxy.ws_url, max_size=None) as ws:
                while True:
                    await ws.send(json.dumps(create(name, metadata={"bench_deltas": str(deltas),
                                                                    "bench_pace_ms": str(pace_ms)})))
                    while True:
                        frame = await ws.recv()
                        assert isinstance(frame, str)
                        frames.append(frame)
                        if '"response.completed"' in frame[:80]:
                            break
        except (websockets.ConnectionClosed, OSError):
            pass

    async def go() -> None:
        tasks = [asyncio.create_task(session(f"paced-{i}", 200, 20)) for i in range(10)]
        tasks += [asyncio.create_task(session(f"burst-{i}", 20_000, 0)) for i in range(10)]
        async with asyncio.timeout(60):  # kill under load: once the bursts have carried 60,000 frames
            while sum(len(v) for k, v in received.items() if k.startswith("burst")) < 60_000:
                await asyncio.sleep(0.05)
        workers.extend(child_pids(proxy.proc.pid))
        os.kill(proxy.proc.pid, signal.SIGKILL)
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)

    try:
        asyncio.run(go())
        proxy.proc.wait()
        wait_for_workers(workers)
    finally:
        proxy.stop()
        bench_upstream.stop()
    by_session: dict[str, list[str]] = {}
    for f in recordings(rec_dir):
        rec = load(str(f))
        first = next(e for e in rec.events if e.kind == "client_frame")
        name = json.loads(first.text or "{}")["input"][0]["content"][0]["text"]
        by_session[name] = [frame for e in rec.events if e.kind == "to_client" for frame in e.frames]
    missing = {name: len(frames) for name, frames in received.items() if name not in by_session}
    assert not missing, f"sessions without a recording: {missing}"
    lost = {}
    for name, frames in received.items():
        recorded = by_session[name]
        same = next((i for i, (a, b) in enumerate(zip(frames, recorded, strict=False)) if a != b),
                    min(len(frames), len(recorded)))
        if same < len(frames):
            lost[name] = len(frames) - same
    total = sum(map(len, received.values()))
    bursts = sum(len(v) for k, v in received.items() if k.startswith("burst"))
    assert bursts > 50_000, f"the bursting clients received only {bursts} frames: no load to speak of"
    assert not lost, f"frames clients received that are not in the recordings: {sum(lost.values())} of {total} ({lost})"


def test_unwritable_recording_is_loud_and_harmless(module_tmp: Path, upstream: Upstream) -> None:
    rec_dir = module_tmp / "rec-gone"
    proxy = start_mitmdump(module_tmp, upstream.url, f"codexbridge_record={rec_dir}")
    for _ in range(100):
        if rec_dir.exists():
            break
        time.sleep(0.05)
    shutil.rmtree(rec_dir)  # the disk "fails" after startup

    async def go() -> None:
        async with websockets.connect(proxy.ws_url) as ws:
            await ws.send(json.dumps(create("hi")))
            assert (await until_terminal(ws))[-1]["type"] == "response.completed"

    try:
        asyncio.run(go())
    finally:
        proxy.stop()
    assert "RECORDING FAILED" in proxy.log
