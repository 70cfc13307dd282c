"""mitmdump -s entry script: the Codex Responses WebSocket bridge."""

from codexbridge.addon import CodexBridge

addons = [CodexBridge()]
