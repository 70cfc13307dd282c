#!/usr/bin/env python3
"""Micro-benchmark (not a test): the bridge's cost per relayed event in ResponseRun's read callback, in memory.

One 64 KB network read of `response.output_text.delta` events (ASCII, or with Latin, punctuation, CJK or emoji
text) goes through
ResponseRun._on_body to a downstream that drops the frames, many times; prints nanoseconds per event (best of
several rounds). Run it against two checkouts to compare them:

    .venv/bin/python scripts/bench_relay_read.py
    PYTHONPATH=<other checkout>/src .venv/bin/python scripts/bench_relay_read.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import codexbridge
from codexbridge.bridge.response_run import Downstream, ResponseRun
from codexbridge.bridge.upstream import UpstreamPool, UpstreamSettings
from codexbridge.responses.conversation import PreparedRequest


def read_of(text: str, size: int = 64 * 1024) -> tuple[bytes, int]:
    events, n = [], 0
    while sum(map(len, events)) < size:
        n += 1
        event = {"type": "response.output_text.delta", "sequence_number": n, "item_id": "msg_bench",
                 "output_index": 0, "content_index": 0, "delta": text}
        events.append(b"event: response.output_text.delta\ndata: %s\n\n" % json.dumps(event, ensure_ascii=False,
                                                                                      separators=(",", ":")).encode())
    return b"".join(events), n


async def measure(text: str, reads: int, rounds: int) -> float:
    chunk, per_read = read_of(text)

    def emit(frames: list[bytes], synthetic: bool) -> bool:
        return True

    async def drained() -> bool:
        return True

    best = float("inf")
    for _ in range(rounds):
        run = ResponseRun(PreparedRequest({"model": "m", "input": []}, [], True, None), None, UpstreamPool(),
                          UpstreamSettings(), "http://127.0.0.1:1/v1/responses", [],
                          Downstream(emit, lambda: False, drained), None, lambda _run: None)
        on_body: Any = run._on_body
        start = time.perf_counter()
        for _ in range(reads):
            on_body(chunk)
        best = min(best, (time.perf_counter() - start) / (reads * per_read))
    return best * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reads", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"codexbridge from {codexbridge.__file__}")
    for label, text in (("ASCII", "tok "), ("Latin", "café naïve "), ("punctuation", "it’s — ok "), ("CJK", "你好世界 "),
                        ("emoji", "héllo 你好 🙂 ")):
        ns = asyncio.run(measure(text, args.reads, args.rounds))
        print(f"{label:12} {ns:7.1f} ns per event")


if __name__ == "__main__":
    main()
