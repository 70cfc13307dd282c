"""What the addon decided for each WebSocket flow before mitmproxy builds its layer: bridge, keepalive, recording."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mitmproxy import http

from codexbridge.bridge.session import ResponseMeter
from codexbridge.recording.pipe import RemoteRecorder
from codexbridge.responses.conversation import ClientFrameError
from codexbridge.responses.keepalive import KeepalivePolicy

if TYPE_CHECKING:
    from codexbridge.mitm.outbox import ClientOutbox


class BridgeHooks(Protocol):
    """What a bridged flow's layer calls (implemented by session.BridgeSession); what they answer leaves through
    the flow's outbox before they return."""

    max_frame_bytes: int

    def on_client_text(self, text: str) -> None: ...
    def on_client_error(self, error: ClientFrameError) -> None: ...
    def on_client_closed(self) -> None: ...


@dataclass(slots=True)
class FlowPlan:
    """What the addon decided for one WebSocket flow before its layer exists."""

    hooks: BridgeHooks | None = None  # None: relay to the upstream (passthrough)
    keepalive: KeepalivePolicy | None = None
    drain: bool = False  # passthrough: after a pong timeout, read the upstream to its terminal event
    outbox: ClientOutbox | None = None  # bridged: made by the addon, which hands it to the session too
    recorder: RemoteRecorder | None = None
    message_hook: bool = False  # run websocket_message per message (bridged: client frames, before bridging)
    meter: FlowMeter | None = None  # plain counters for the metrics addon, told per frame and per ping
    flow_messages: int = 0  # frames the flow keeps for mitmweb and -w (the most recent ones); 0: all


class FlowMeter(ResponseMeter, Protocol):
    """What a flow's layer, outbox, keepalive and bridge session tell the metrics addon (plain counters:
    implemented by addons.metrics.FlowMeter)."""

    def client_frame(self, content: bytes) -> None: ...
    def to_client(self, frames: int, nbytes: int) -> None: ...
    def server_event(self, content: bytes) -> None: ...
    def pong(self, rtt: float) -> None: ...
    def pong_timeout(self) -> None: ...


_plans: dict[str, FlowPlan] = {}
_flow_messages = 200


def set_flow_messages(window: int) -> None:
    """How many frames each new flow keeps (the codexbridge_flow_messages option); 0 keeps them all."""
    global _flow_messages
    _flow_messages = window


def plan_flow(flow: http.HTTPFlow, plan: FlowPlan) -> None:
    """Registers how the layer of this upgrade flow must behave (bridge and/or keepalive)."""
    _plans[flow.id] = plan


def plan_of(flow: http.HTTPFlow) -> FlowPlan:
    """The flow's plan, made on first use: the addons (bridge, keepalive, recorder, metrics) each fill in their part.
    A new plan keeps mitmproxy's websocket_message hook per message until an addon decides otherwise."""
    plan = _plans.get(flow.id)
    if plan is None:
        plan = _plans[flow.id] = FlowPlan(message_hook=True, flow_messages=_flow_messages)
    return plan


def forget_flow(flow: http.HTTPFlow) -> FlowPlan | None:
    """Takes the plan of a flow out of the registry (its layer starts, or the flow ended before it did)."""
    return _plans.pop(flow.id, None)


def detach_server(flow: http.HTTPFlow) -> None:
    """For an upgrade the upstream refused and the bridge took over: the refusing connection (still in the
    HTTP layer's table, its stream finished) must not be where injected events are routed."""
    from mitmproxy.connection import Server

    flow.server_conn = Server(address=None)
