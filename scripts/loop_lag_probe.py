"""A measuring addon (not shipped): how late the proxy's event loop runs a timer, written as JSON at shutdown.

Load it next to the bridge (`mitmdump -s addons/bridge.py -s scripts/loop_lag_probe.py`) with the environment
variable CODEXBRIDGE_LOOP_LAG_OUT naming the output file; scripts/bench_loop_lag.py does that.
"""

from __future__ import annotations

import asyncio
import json
import os
import time


class LoopLagProbe:
    """Every 2 ms asks the loop to wake it; the lateness of each wake-up is what any ready callback waits."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.task: asyncio.Task[None] | None = None

    def running(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            due = time.perf_counter() + 0.002
            await asyncio.sleep(0.002)
            self.lags.append(time.perf_counter() - due)
            if len(self.lags) >= 200_000:
                del self.lags[:100_000]

    def done(self) -> None:
        out = os.environ.get("CODEXBRIDGE_LOOP_LAG_OUT")
        if out:
            with open(out, "w") as f:
                json.dump(self.lags, f)


addons = [LoopLagProbe()]
