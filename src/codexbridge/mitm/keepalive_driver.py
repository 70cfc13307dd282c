"""Runs a flow's keepalive schedule (sans-IO rules in responses.keepalive) on the event loop."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from codexbridge.mitm.channel import MitmChannel
from codexbridge.mitm.messages import BridgeInjected, placeholder_message
from codexbridge.responses.keepalive import TEXT_KEEPALIVE_FRAME, Action, KeepalivePolicy, KeepaliveState

if TYPE_CHECKING:
    from codexbridge.mitm.layer import CodexWebsocketLayer

log = logging.getLogger("codexbridge.mitm")


class KeepaliveDriver:
    """Runs one flow's keepalive schedule on the event loop: a timer, and injected pings/closes."""

    def __init__(self, layer_: CodexWebsocketLayer, policy: KeepalivePolicy) -> None:
        self.layer = layer_
        self.state = KeepaliveState(policy)
        self.loop = asyncio.get_running_loop()
        self.channel = layer_.plan.channel or MitmChannel(layer_.flow)
        self.channel.keepalive = self
        self.counters = (0, 0)  # frames, bytes written to the client
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None

    def wrote(self, text: bool, nbytes: int, frames: int = 1) -> None:
        self.state.wrote(self.loop.time(), text)
        if text:
            self.counters = (self.counters[0] + frames, self.counters[1] + nbytes)
        if self._timer is None:
            self._arm()

    def response_started(self) -> None:
        self.state.response_started(self.loop.time())
        self._arm()

    def response_ended(self) -> None:
        self.state.response_ended()

    def pong(self, payload: bytes) -> bool:
        """Consumes a pong if it answers our ping (then it must not be relayed)."""
        if not self.state.owns(payload):
            return False
        rtt = self.state.pong(payload, self.loop.time())
        if self.layer.recorder is not None:
            self.layer.recorder.pong(payload, rtt)
        if rtt is not None:
            log.debug("stage=downstream_ping_ok client=%s rtt_ms=%.1f", self.layer.context.client.peername, rtt * 1000)
        return True

    def stop(self) -> None:
        self.state.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        when = self.state.next_wakeup()
        if when is None:
            return
        if self._timer is not None:
            if self._armed_at is not None and self._armed_at <= when:
                return
            self._timer.cancel()
        self._armed_at = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        peer = self.layer.context.client.peername
        for action in self.state.due(self.loop.time()):
            if action is Action.PING:
                self._inject(BridgeInjected(self.layer.flow, placeholder_message(), ping=self.state.ping_payload))
            elif action is Action.TEXT:
                log.debug("stage=text_keepalive client=%s", peer)
                self._inject(BridgeInjected(self.layer.flow, placeholder_message(), frames=[TEXT_KEEPALIVE_FRAME],
                                            synthetic=True, keepalive=True))
            elif action is Action.PONG_TIMEOUT:
                log.info("stage=downstream_ping_timeout client=%s timeout=%ss", peer, self.state.policy.ping_timeout)
                self._inject(BridgeInjected(self.layer.flow, placeholder_message(), close=(1011, "pong timeout")))
        self._arm()

    def _inject(self, event: BridgeInjected) -> None:
        self.loop.create_task(self.channel.inject(event))
