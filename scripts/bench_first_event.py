#!/usr/bin/env python3
"""First-event floor (not a test): direct SSE vs a bare asyncio TCP relay vs the bridge, in one run.

The bare relay forwards bytes between the client and the upstream without parsing anything: it shows
what one more process on the path costs on this machine (two more wake-ups per turn), the floor under
any proxy's added first-event latency. Each round measures the three in turn; medians of the p50s.

Run: .venv/bin/python scripts/bench_first_event.py [--turns 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from codexbridge.tools.bench import SseClient, WsClient
from codexbridge.tools.procs import free_port

RELAY = textwrap.dedent('''
    import asyncio, sys
    up_port, port = int(sys.argv[1]), int(sys.argv[2])

    class Relay(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.peer, self.early = transport, None, []
            asyncio.get_running_loop().create_task(self.connect())

        async def connect(self):
            relay = self

            class Upstream(asyncio.Protocol):
                def data_received(self, data):
                    relay.transport.write(data)

                def connection_lost(self, exc):
                    relay.transport.close()

            self.peer, _ = await asyncio.get_running_loop().create_connection(Upstream, "127.0.0.1", up_port)
            for data in self.early:
                self.peer.write(data)

        def data_received(self, data):
            if self.peer is None:
                self.early.append(data)
            else:
                self.peer.write(data)

    async def main():
        await asyncio.get_running_loop().create_server(Relay, "127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())
''')


async def first_event_p50(client_cls: type, port: int, turns: int) -> float:
    client, _ = await client_cls.connect(port)
    firsts = []
    try:
        for i in range(turns + 20):
            turn = await client.turn(1, 0, 10.0)
            if i >= 20:  # the first turns warm the pools
                firsts.append(turn.first * 1000)
    finally:
        client.writer.close()
    return statistics.median(firsts)


async def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main(turns: int, rounds: int) -> None:
    bin_dir = Path(sys.executable).parent
    up, relay, bridge = free_port(), free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "codexbridge.tools.bench_servers", "--port", str(up)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-c", RELAY, str(up), str(relay)], stderr=subprocess.DEVNULL),
        subprocess.Popen([str(bin_dir / "mitmdump"), "--mode", f"reverse:http://127.0.0.1:{up}", "--listen-host",
                          "127.0.0.1", "--listen-port", str(bridge), "--set", "connection_strategy=lazy", "-q",
                          "-s", str(Path(__file__).resolve().parent.parent / "addons" / "bridge.py")],
                         stderr=subprocess.DEVNULL),
    ]
    try:
        for port in (up, relay, bridge):
            await wait_listening(port)
        results: dict[str, list[float]] = {"direct SSE": [], "bare relay": [], "bridge": []}
        for r in range(rounds):
            results["direct SSE"].append(await first_event_p50(SseClient, up, turns))
            results["bare relay"].append(await first_event_p50(SseClient, relay, turns))
            results["bridge"].append(await first_event_p50(WsClient, bridge, turns))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in results.items()))
        base = statistics.median(results["direct SSE"])
        for name, values in results.items():
            p50 = statistics.median(values)
            print(f"{name:11s} first event p50 {p50:.3f} ms   added to direct {p50 - base:+.3f} ms")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.turns, args.rounds))
