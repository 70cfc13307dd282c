"""mitmdump -s entry script: the Codex Responses WebSocket bridge."""

from codexbridge.addons.bridge import CodexBridge

addons = [CodexBridge()]
