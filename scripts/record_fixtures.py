"""Regenerates recordings/: the real Codex CLI through a recording bridge against the demo upstream.

Run: .venv/bin/python scripts/record_fixtures.py   (needs ./scripts/setup.sh --test once for Codex)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from appserver import run_thread  # noqa: E402
from support import Codex, codex_binary, start_mitmdump, start_upstream  # noqa: E402

OUT = ROOT / "recordings"
ELIDE = 400
QUIET = f"""
model_instructions_file = "{OUT / 'instructions.md'}"
include_permissions_instructions = false
include_apps_instructions = false
include_collaboration_mode_instructions = false
include_environment_context = false
project_doc_max_bytes = 0
web_search = "disabled"
check_for_update_on_startup = false
[skills]
include_instructions = false
[agents]
enabled = false
[tools.experimental_request_user_input]
enabled = false
[analytics]
enabled = false
[features]
plugins = false
shell_snapshot = false
goals = false
view_image = false
unbounded_connection_retries = false
"""

SCENARIOS: dict[str, tuple[list[str], list[str]]] = {
    # name: (mitmdump options, prompts; two prompts = two turns of one app-server thread)
    "plain-turn": ([], ["say hi"]),
    "tool-call-chain": ([], ["run echo"]),
    "multi-turn-thread": ([], ["say hi", "[[reply:hello again]] say hi again"]),
    "upstream-error": ([], ["[[error:429]] please"]),
    "idle-keepalive": (["codexbridge_ping_interval=2", "codexbridge_ping_timeout=1"], ["[[sleep:5]] think slowly"]),
}


def main() -> int:
    if codex_binary() is None:
        print("the Codex CLI is missing: run ./scripts/setup.sh --test first", file=sys.stderr)
        return 1
    for old in OUT.glob("*.jsonl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        upstream = start_upstream(tmp)
        try:
            for name, (options, prompts) in SCENARIOS.items():
                rec_dir = tmp / name
                proxy = start_mitmdump(tmp, upstream.url, f"codexbridge_record={rec_dir}",
                                       f"codexbridge_record_elide={ELIDE}", *options)
                try:
                    codex = Codex.make(tmp)
                    codex.configure(proxy.base_url, websockets=True, extra=QUIET)
                    if len(prompts) == 1:
                        result = codex.exec(prompts[0])
                        outcome = f"exit {result.returncode}: {result.stdout.strip()[-80:]!r}"
                    else:
                        outcome = f"answers {run_thread(codex, prompts)!r}"
                finally:
                    proxy.stop()
                files = sorted(rec_dir.glob("*.jsonl"))
                for i, f in enumerate(files):
                    target = OUT / (f"{name}.jsonl" if len(files) == 1 else f"{name}-{i + 1}.jsonl")
                    shutil.copyfile(f, target)
                    target.chmod(0o644)
                print(f"{name}: {len(files)} recording(s); codex {outcome}")
        finally:
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
