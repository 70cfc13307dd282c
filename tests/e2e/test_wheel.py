"""The package installs and runs anywhere: the wheel, in a fresh venv outside the checkout, runs one real Codex turn."""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from codexbridge.tools.procs import free_port, wait_for_port
from support.codex import Codex
from support.fresh_install import FreshInstall, run

pytestmark = pytest.mark.codex


def test_the_wheel_installs_in_a_fresh_venv_and_bridges_a_real_codex_turn(fresh_install: FreshInstall,
                                                                          tmp_path: Path, codex: Codex) -> None:
    env, venv = fresh_install.env, fresh_install.venv
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    imported = fresh_install.imports_alone
    assert imported.returncode == 0 and "imported" in imported.stdout, imported.stderr[-3000:]  # all declared
    scripts = run([fresh_install.bin("codexbridge"), "scripts"], elsewhere, env, 60).stdout.split()
    assert {Path(s).name for s in scripts} >= {"bridge.py", "keepalive.py", "record.py"}
    assert all(Path(s).is_relative_to(venv) and Path(s).exists() for s in scripts), scripts

    port = free_port()
    marker = uuid.uuid4().hex
    proc = subprocess.Popen([str(fresh_install.bin("codexbridge")), "run", "--port", str(port)], cwd=elsewhere,
                            env={**env, "CODEXBRIDGE_TEST_MARK": marker}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for_port("127.0.0.1", port, timeout=60, proc=None), "codexbridge run did not listen"
        codex.configure(f"http://127.0.0.1:{port}/v1", websockets=True)
        result = codex.exec("say hi")
        assert result.returncode == 0, result.stderr
        assert "hi from mock" in result.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "listening on" in out and str(venv) in out  # the banner, and mitmdump ran the installed script
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _has_marker(p, marker)]
    assert left == []


def _has_marker(proc_dir: Path, marker: str) -> bool:
    try:
        return marker.encode() in (proc_dir / "environ").read_bytes()
    except OSError:
        return False
