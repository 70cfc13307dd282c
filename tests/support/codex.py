"""The real Codex CLI with its own CODEX_HOME, pointed at a base URL, run one prompt at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from support import ROOT, need
from support.mitmdump import start_mitmdump
from support.upstream import start_upstream

# The Codex versions scripts/setup.sh pins (keep in step with it): the one the suite runs by default, and the oldest
# the whole parity test passes on. Codex uses the WebSocket mode for `supports_websockets = true` since 0.116.0
# (0.93.0-0.115.0 only with the under-development `features.responses_websockets`), but before 0.166.0 it lacks
# what some scenarios check (README, Fidelity).
PINNED = "0.169.0"
OLDEST = "0.166.0"
# `[agents] enabled = false` (no multi-agent tools in the requests): older versions read `[agents]` as agent roles and
# refuse to start on it (0.144.0 does, 0.145.0 takes it).
_AGENTS_ENABLED_SINCE = (0, 145, 0)


def codex_versions() -> list[str]:
    """The Codex versions the tests run: CODEXBRIDGE_CODEX_VERSIONS (scripts/test --codex), else the pinned one."""
    return os.environ.get("CODEXBRIDGE_CODEX_VERSIONS", "").replace(",", " ").split() or [PINNED]


def codex_binary_for(version: str) -> Path | None:
    """Where scripts/setup.sh installs a version: the pinned one in .tools/codex, any other in .tools/codex-VERSION
    ("latest" is the newest on npm, resolved at install time and recorded in .tools/codex-latest/VERSION;
    "pinned" and "oldest" name the pinned numbers)."""
    version = {"pinned": PINNED, "oldest": OLDEST}.get(version, version)
    folder = ROOT / ".tools" / ("codex" if version == PINNED else f"codex-{version}")
    binary = folder / "node_modules" / ".bin" / "codex"
    return binary if binary.exists() else None


def codex_binary() -> str | None:
    """The Codex the single-version tests run: CODEXBRIDGE_CODEX, else the first of the requested versions
    (CODEXBRIDGE_CODEX_VERSIONS), else the pinned one, else a codex on PATH."""
    explicit = os.environ.get("CODEXBRIDGE_CODEX")
    if explicit:
        return explicit
    local = codex_binary_for(codex_versions()[0])
    if local is not None:
        return str(local)
    return shutil.which("codex")


@cache
def installed_version(binary: str) -> str:
    """The exact version a Codex binary reports (`codex-cli 0.169.0` -> `0.169.0`)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60).stdout
    return out.strip().rsplit(" ", 1)[-1]


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("-")[0].split("."))
    except ValueError:
        return ()


def quiet_codex_config(instructions: Path, version: str | None = None) -> str:
    """Config keys that keep Codex offline and its requests free of its own long texts (for Codex `version`, by
    default the one codex_binary() runs)."""
    if version is None:
        binary = codex_binary()
        version = installed_version(binary) if binary else PINNED
    agents = "[agents]\nenabled = false\n" if _version_tuple(version) >= _AGENTS_ENABLED_SINCE else ""
    return f"""
model_instructions_file = "{instructions}"
include_permissions_instructions = false
include_apps_instructions = false
include_collaboration_mode_instructions = false
include_environment_context = false
project_doc_max_bytes = 0
web_search = "disabled"
check_for_update_on_startup = false
[skills]
include_instructions = false
{agents}[tools.experimental_request_user_input]
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


@dataclass
class CodexRun:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Codex:
    """The real Codex CLI with its own CODEX_HOME pointing at a base URL."""

    binary: str
    home: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, tmp: Path) -> Codex:
        binary = codex_binary()
        need("the Codex CLI (scripts/setup.sh --test installs it)", binary is not None)
        assert binary is not None
        home = Path(tempfile.mkdtemp(prefix="codex-home-", dir=tmp))
        work = Path(tempfile.mkdtemp(prefix="codex-work-", dir=tmp))
        return cls(binary, home, work)

    def configure(self, base_url: str, websockets: bool = True, extra: str = "",
                  provider: dict[str, Any] | None = None) -> None:
        settings: dict[str, Any] = {
            "name": "Local mock",
            "base_url": base_url,
            "env_key": "MOCK_API_KEY",
            "wire_api": "responses",
            "request_max_retries": 0,
            "stream_max_retries": 1,
            "supports_websockets": websockets,
            **(provider or {}),
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        (self.home / "config.toml").write_text(
            'model = "gpt-5.5"\nmodel_provider = "mock"\n' + extra + "\n[model_providers.mock]\n" + "\n".join(lines) + "\n"
        )

    def run(self, *args: str, timeout: float = 120) -> CodexRun:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "CODEX_HOME": str(self.home),
            "MOCK_API_KEY": "sk-test-codexbridge",
            "NO_COLOR": "1",
            **self.env,
        }
        proc = subprocess.run(
            [self.binary, *args], cwd=self.workdir, env=env, capture_output=True, timeout=timeout, text=True,
            stdin=subprocess.DEVNULL,
        )
        return CodexRun(proc.returncode, proc.stdout, proc.stderr)

    def exec(self, prompt: str, *extra: str, timeout: float = 120) -> CodexRun:
        return self.run("exec", "--skip-git-repo-check", "--sandbox", "danger-full-access", *extra, prompt,
                        timeout=timeout)


def record_codex_echo(tmp: Path, codex: Codex, rec_dir: Path, *, websockets: bool, upstream_flags: tuple[str, ...] = (),
                      script: str | None = None) -> tuple[CodexRun, str]:
    """Real Codex runs "run echo" through a recording mitmdump (into rec_dir, long strings elided) in front of the
    mock upstream; both are stopped after it, so what follows is offline. Returns the run and the quiet config."""
    upstream = start_upstream(tmp, *upstream_flags)
    proxy = start_mitmdump(tmp, upstream.url, f"codexbridge_record={rec_dir}", "codexbridge_record_elide=40",
                           script=script)
    quiet = quiet_codex_config(ROOT / "recordings" / "instructions.md")
    try:
        codex.configure(proxy.base_url, websockets=websockets, extra=quiet)
        live = codex.exec("run echo")
    finally:
        proxy.stop()
        upstream.stop()
    assert live.returncode == 0 and "tool said: hello-from-tool" in live.stdout, live.stderr
    return live, quiet
