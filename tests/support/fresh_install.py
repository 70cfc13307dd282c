"""The package as a user gets it: the wheel built from a copy of the checkout, pip-installed into a new venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from support import ROOT

# Every module of a plain install must import with its declared dependencies alone; codexbridge.testing is a pytest
# plugin (pytest brings itself) and the scripts are mitmdump's to load.
IMPORT_ALL = (
    "import importlib, pkgutil, codexbridge\n"
    "for m in pkgutil.walk_packages(codexbridge.__path__, 'codexbridge.'):\n"
    "    if not m.name.startswith(('codexbridge.testing', 'codexbridge.scripts')):\n"
    "        importlib.import_module(m.name)\n"
    "print('imported')\n"
)

# What mitmdump, the CLI, the demo upstream and a pytest run with the plugin and the OpenAI SDK import.
WARM = ("import mitmproxy.tools.main, mitmproxy.tools.dump, codexbridge.tools.cli, codexbridge.tools.demo_upstream,"
        " codexbridge.testing.plugin, openai, pytest, _pytest.junitxml\n"
        "openai.OpenAI(api_key='sk-none').responses.connect\n")


@dataclass(frozen=True)
class FreshInstall:
    venv: Path
    python: Path
    imports_alone: subprocess.CompletedProcess[str]  # IMPORT_ALL, run before pytest and openai were added
    env: dict[str, str]  # the environment without this checkout's venv or paths

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def install_wheel(home: Path) -> FreshInstall:
    """Builds the wheel, installs it into home/venv, checks its imports, then adds pytest and openai (the plugin's
    users have them); one install serves every test that needs the package outside the checkout."""
    # PYTHONDONTWRITEBYTECODE too: the installed modules compile on first import (pip --no-compile below)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")}
    source = home / "source"  # a copy: building in the checkout would leave build/ and egg-info behind
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("src", "addons"):
        shutil.copytree(ROOT / part, source / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", home / "dist", source], home, env, 600)
    (wheel,) = (home / "dist").glob("codexbridge-*.whl")

    elsewhere = home / "elsewhere"
    elsewhere.mkdir()
    venv = home / "venv"
    base_python = getattr(sys, "_base_executable", None) or shutil.which("python3.13") or sys.executable
    # pip installs into the venv from outside it (--python), as a pip inside it would, without the seconds of
    # bootstrapping a pip of its own; and compiles nothing (most of the files are never imported): WARM compiles
    # what the tests' processes import, once, for them all (they may run with PYTHONDONTWRITEBYTECODE)
    run([base_python, "-m", "venv", "--without-pip", venv], elsewhere, env, 120)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--disable-pip-version-check",
           "--no-compile"]
    run([*pip, wheel], elsewhere, env, 900)
    imports = subprocess.run([str(python), "-c", IMPORT_ALL], cwd=elsewhere, env=env, capture_output=True,
                             text=True, timeout=120)
    run([*pip, "pytest", "openai"], elsewhere, env, 900)
    run([python, "-c", WARM], elsewhere, env, 120)
    return FreshInstall(venv, python, imports, env)
