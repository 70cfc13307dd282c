"""`codexbridge inspect` and `codexbridge diff` on small recordings built in memory, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from codexbridge.recording.schema import (
    ClientFrame,
    Close,
    Complete,
    Header,
    HttpMessage,
    Ping,
    Pong,
    Recording,
    ToClient,
    UpstreamChunk,
    UpstreamEnd,
    UpstreamRequest,
    UpstreamResponse,
)

CLI = str(Path(sys.executable).parent / "codexbridge")


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def sse(*events: dict[str, Any]) -> str:
    return "".join(f"event: {e['type']}\ndata: {dumps(e)}\n\n" for e in events)


def bridge_session(tag: str = "a", scale: float = 1.0, deltas: tuple[str, ...] = ("Hel", "lo", "!")) -> Recording:
    """A prewarm and one streamed turn; `tag` changes every id and timestamp, `scale` stretches the clock."""
    port = 40000 + ord(tag[0])
    url = f"http://127.0.0.1:{port}/v1/responses"
    created_at = 1_700_000_000 + 1000 * ord(tag[0])
    pre, resp, msg = f"resp_pre_{tag}", f"resp_{tag}", f"msg_out_{tag}"
    usage = {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
    meta = {"client_metadata": {"session_id": f"s-{tag}"}, "prompt_cache_key": f"pk-{tag}"}
    developer = {"type": "message", "id": f"msg_dev_{tag}", "role": "developer",
                 "content": [{"type": "input_text", "text": "be brief"}]}
    user = {"type": "message", "id": f"msg_user_{tag}", "role": "user",
            "content": [{"type": "input_text", "text": "say hi"}]}
    prewarm = {"type": "response.create", "model": "gpt-5.5", "generate": False, "input": [developer], **meta}
    turn = {"type": "response.create", "model": "gpt-5.5", "previous_response_id": pre, "input": [user], **meta}
    body = {"model": "gpt-5.5", "stream": True, "input": [developer, user], **meta}

    def response(rid: str, status: str, **extra: Any) -> dict[str, Any]:
        return {"id": rid, "object": "response", "created_at": created_at, "model": "gpt-5.5", "status": status,
                "output": [], **extra}

    def delta(n: int, text: str) -> dict[str, Any]:
        return {"type": "response.output_text.delta", "sequence_number": 3 + n, "item_id": msg, "output_index": 0,
                "content_index": 0, "delta": text}

    start = [
        {"type": "response.created", "sequence_number": 0, "response": response(resp, "in_progress")},
        {"type": "response.in_progress", "sequence_number": 1, "response": response(resp, "in_progress")},
        {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
         "item": {"id": msg, "type": "message", "role": "assistant", "content": []}},
    ]
    done = [
        {"type": "response.output_text.done", "sequence_number": 3 + len(deltas), "item_id": msg, "output_index": 0,
         "content_index": 0, "text": "".join(deltas)},
        {"type": "response.completed", "sequence_number": 4 + len(deltas),
         "response": response(resp, "completed", usage=usage)},
    ]
    d = [delta(n, text) for n, text in enumerate(deltas)]
    headers = [("Host", f"127.0.0.1:{port}"), ("x-client-request-id", f"req-{tag}"), ("session-id", f"s-{tag}"),
               ("user-agent", "codex_exec/0.169.0"), ("authorization", "<redacted>")]
    events: list[Any] = [
        ClientFrame(t=0.002, text=dumps(prewarm)),
        ToClient(t=0.003, synthetic=True, frames=[
            dumps({"type": "response.created", "sequence_number": 0, "response": response(pre, "in_progress")}),
            dumps({"type": "response.completed", "sequence_number": 1,
                   "response": response(pre, "completed", usage={k: 0 for k in usage})}),
        ]),
        ClientFrame(t=0.050, text=dumps(turn)),
        UpstreamRequest(t=0.060, method="POST", url=url, headers=headers, body=dumps(body)),
        UpstreamResponse(t=0.300, status=200, headers=[("content-type", "text/event-stream")]),
        UpstreamChunk(t=0.310, text=sse(*start)),
        ToClient(t=0.311, frames=[dumps(e) for e in start]),
        UpstreamChunk(t=0.500, text=sse(d[0])),
        ToClient(t=0.501, frames=[dumps(d[0])]),  # the first token: 451 ms after the turn's frame
        UpstreamChunk(t=0.520, text=sse(*d[1:])),
        ToClient(t=0.521, frames=[dumps(e) for e in d[1:]]),
        Ping(t=1.900, payload="1"),
        Pong(t=1.950, payload="1", rtt_ms=50.0),
        UpstreamChunk(t=2.600, text=sse(*done)),
        ToClient(t=2.601, frames=[dumps(e) for e in done]),
        UpstreamEnd(t=2.602),
        Close(t=3.000, code=1000, reason="", by="client"),
        Complete(t=3.001),
    ]
    for e in events:
        e.t = round(e.t * scale, 6)
    header = Header(tool_version="0.1.0", mode="bridge", upstream=url, elide_over=400,
                    started_at=f"2026-01-01T00:00:0{ord(tag[0]) % 9}Z",
                    request=HttpMessage(method="GET", url=url, headers=headers))
    return Recording(header=header, events=events)


def write(path: Path, rec: Recording, torn: bool = False) -> Path:
    lines = [rec.header.model_dump_json()] + [e.model_dump_json() for e in rec.events]
    text = "\n".join(lines) + "\n"
    if torn:  # the proxy died in the middle of writing its last line
        text = "\n".join(lines[:-2]) + "\n" + lines[-2][: len(lines[-2]) // 2]
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def session_file(tmp_path: Path) -> Path:
    return write(tmp_path / "a.jsonl", bridge_session())


def test_inspect_json_summary(session_file: Path) -> None:
    run = cli("inspect", session_file, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["complete"] is True and summary["mode"] == "bridge"
    prewarm, turn = summary["responses"]
    assert prewarm["prewarm"] is True and prewarm["response_id"] == "resp_pre_a" and prewarm["ttft_ms"] is None
    assert turn["response_id"] == "resp_a" and turn["status"] == "response.completed"
    assert turn["first_event_ms"] == pytest.approx(261.0)
    assert turn["ttft_ms"] == pytest.approx(451.0)
    assert turn["duration_ms"] == pytest.approx(2551.0)
    assert (turn["deltas"], turn["delta_chars"]) == (3, 6)
    assert turn["usage"] == {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
    assert (summary["pings"], summary["pongs"], summary["rtt_ms_max"]) == (1, 1, 50.0)
    assert summary["longest_silence_ms"] == pytest.approx(2080.0)  # pings do not count as data
    assert summary["errors"] == [] and summary["close"] == "1000 by client"


def test_inspect_table(session_file: Path) -> None:
    run = cli("inspect", session_file)
    assert run.returncode == 0 and run.stdout == ""
    out = run.stderr
    assert "3 × output_text.delta (6 chars)" in out  # a run of deltas over two writes is one row
    assert "4 chunks, " in out  # so does the run of chunks the bridge forwarded meanwhile
    assert "generate=false" in out and "prev=resp_pre_a" in out and "rtt 50.0 ms" in out
    assert "complete" in out and all(len(line) <= 120 for line in out.splitlines())


def test_inspect_torn_last_line(tmp_path: Path) -> None:
    path = write(tmp_path / "torn.jsonl", bridge_session(), torn=True)
    run = cli("inspect", path, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["complete"] is False and summary["events"] == 16  # Close torn, Complete never written
    assert summary["responses"][1]["ttft_ms"] == pytest.approx(451.0)
    assert "cut off" in cli("inspect", path).stderr


def test_unparsable_file(tmp_path: Path, session_file: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something else"}\n')
    assert cli("inspect", bad).returncode == 1
    assert cli("inspect", tmp_path / "missing.jsonl").returncode == 1
    assert cli("diff", session_file, bad).returncode == 2


def test_diff_with_itself_and_with_other_ids(tmp_path: Path, session_file: Path) -> None:
    run = cli("diff", session_file, session_file)
    assert run.returncode == 0 and "recordings are equivalent" in run.stderr
    other = write(tmp_path / "b.jsonl", bridge_session(tag="z", scale=1.7))
    assert "resp_z" in other.read_text() and "resp_a" not in other.read_text()
    run = cli("diff", session_file, other)
    assert run.returncode == 0, run.stderr
    assert "recordings are equivalent" in run.stderr
    assert json.loads(cli("diff", session_file, other, "--json").stdout) == {"equivalent": True, "differences": []}


def test_diff_changed_delta(tmp_path: Path, session_file: Path) -> None:
    other = write(tmp_path / "b.jsonl", bridge_session(tag="q", deltas=("Hex", "lo", "!")))
    run = cli("diff", session_file, other, "--json")
    assert run.returncode == 1
    diffs = json.loads(run.stdout)["differences"]
    assert {"section": "events", "a": "8", "b": "8", "what": "to_client output_text.delta",
            "detail": "$.delta: expected 'Hel', got 'Hex'"} in diffs
    assert any(d["a"] == "14.0" and d["detail"].startswith("$.text:") for d in diffs)  # output_text.done
    text = cli("diff", session_file, other).stderr
    assert "$.delta: expected 'Hel', got 'Hex'" in text and "difference(s)" in text


@pytest.mark.parametrize("where", [16, 2])
def test_diff_extra_client_frame(tmp_path: Path, session_file: Path, where: int) -> None:
    """At the end, or early: then its new id shifts the numbering of every later id, which is no difference."""
    rec = bridge_session(tag="x")
    item = {"type": "message", "id": "msg_extra", "role": "user", "content": []}
    rec.events.insert(where, ClientFrame(t=0.04, text=dumps({"type": "response.create", "input": [item]})))
    run = cli("diff", session_file, write(tmp_path / "b.jsonl", rec), "--json")
    assert run.returncode == 1
    [found] = json.loads(run.stdout)["differences"]
    assert (found["section"], found["a"], found["b"]) == ("events", None, str(where))
    assert found["what"] == "client_frame create"
    assert found["detail"].startswith('only in B: {"input": [{"type": "message", "id": "<id:')
    assert "only in B" in cli("diff", session_file, tmp_path / "b.jsonl").stderr


def test_diff_header_and_timing(tmp_path: Path, session_file: Path) -> None:
    rec = bridge_session(tag="h")
    rec.header.request.headers.append(("x-codex-beta-features", "remote_compaction_v2"))
    rec.events.insert(12, Ping(t=1.95, payload="2"))
    path = write(tmp_path / "b.jsonl", rec)
    diffs = json.loads(cli("diff", session_file, path, "--json").stdout)["differences"]
    assert [d["section"] for d in diffs] == ["header"]  # volatile header values and pings are ignored
    assert "x-codex-beta-features" in diffs[0]["detail"]
    diffs = json.loads(cli("diff", session_file, path, "--json", "--timing").stdout)["differences"]
    assert diffs[-1] == {"section": "timing", "a": None, "b": None, "what": "ping", "detail": "1 in A, 2 in B"}
