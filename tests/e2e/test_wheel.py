"""The package installs and runs anywhere: the wheel, in a fresh venv outside the checkout, runs one real Codex turn."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from codexbridge.tools.procs import free_port, wait_for_port
from support import ROOT
from support.codex import Codex

pytestmark = pytest.mark.codex

# Modules a plain install must import; codexbridge.testing is a pytest plugin (pytest brings itself), scripts are
# mitmdump's to load.
IMPORT_ALL = (
    "import importlib, pkgutil, codexbridge\n"
    "for m in pkgutil.walk_packages(codexbridge.__path__, 'codexbridge.'):\n"
    "    if not m.name.startswith(('codexbridge.testing', 'codexbridge.scripts')):\n"
    "        importlib.import_module(m.name)\n"
    "print('imported')\n"
)


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_in_a_fresh_venv_and_bridges_a_real_codex_turn(tmp_path: Path, codex: Codex) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and egg-info behind
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("src", "addons"):
        shutil.copytree(ROOT / part, source / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        tmp_path, env, 600)
    (wheel,) = (tmp_path / "dist").glob("codexbridge-*.whl")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", None) or shutil.which("python3.13") or sys.executable
    run([base_python, "-m", "venv", str(venv)], elsewhere, env, 120)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], elsewhere, env, 900)

    imported = run([str(venv / "bin" / "python"), "-c", IMPORT_ALL], elsewhere, env, 120)
    assert "imported" in imported.stdout  # every import of the package is a declared dependency
    scripts = run([str(venv / "bin" / "codexbridge"), "scripts"], elsewhere, env, 60).stdout.split()
    assert {Path(s).name for s in scripts} >= {"bridge.py", "keepalive.py", "record.py"}
    assert all(Path(s).is_relative_to(venv) and Path(s).exists() for s in scripts), scripts

    port = free_port()
    marker = uuid.uuid4().hex
    proc = subprocess.Popen([str(venv / "bin" / "codexbridge"), "run", "--port", str(port)], cwd=elsewhere,
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
