"""mitmdump -s entry script: only the recorder, for Codex traffic over HTTP+SSE or WebSocket."""

from codexbridge.addons.recorder import Recorder

addons = [Recorder()]
