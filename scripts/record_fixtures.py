"""Regenerates recordings/: the real Codex CLI through a recording bridge against the demo upstream.

Run: .venv/bin/python scripts/record_fixtures.py   (needs ./scripts/setup.sh --test once for Codex)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from codexbridge.recording.schema import ToClient, dumps_line, load  # noqa: E402
from support.appserver import run_thread  # noqa: E402
from support.codex import Codex, codex_binary, quiet_codex_config  # noqa: E402
from support.mitmdump import start_mitmdump  # noqa: E402
from support.upstream import start_upstream  # noqa: E402

OUT = ROOT / "recordings"
ELIDE = 40  # Codex's own texts (instructions, tool descriptions) are not ours to ship

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
                    codex.configure(proxy.base_url, websockets=True, extra=quiet_codex_config(OUT / "instructions.md"))
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
                    target.write_text(with_every_frame(f))
                    target.chmod(0o644)
                print(f"{name}: {len(files)} recording(s); codex {outcome}")
        finally:
            upstream.stop()
    return 0


def with_every_frame(path: Path) -> str:
    """The recording with relayed batches written out frame by frame instead of as a count of the upstream reads
    before them: a shipped file shows what the client received, and a changed byte of it changes that alone."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out = lines[:1]
    for line, event in zip(lines[1:], load(str(path)).events, strict=True):
        obj = json.loads(line)
        if isinstance(event, ToClient) and obj.get("relayed") is not None:
            line = dumps_line({"kind": "to_client", "t": obj["t"], "frames": event.frames,
                               "synthetic": obj.get("synthetic", False)})
        out.append(line)
    return "".join(out)


if __name__ == "__main__":
    sys.exit(main())
