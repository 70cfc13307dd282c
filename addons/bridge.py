"""mitmdump -s entry script: the Codex Responses WebSocket bridge, with keepalive, recording and metrics."""

from codexbridge.addons.bridge import CodexBridge
from codexbridge.addons.keepalive import Keepalive
from codexbridge.addons.metrics import Metrics
from codexbridge.addons.recorder import Recorder

addons = [CodexBridge(), Keepalive(), Recorder(), Metrics()]
