"""The package's shape: import direction (import-linter contracts), one package touching mitmproxy internals, thin scripts."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "codexbridge"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# mitmproxy's proxy core and its built-in addons are internals; its flow and option APIs are not.
INTERNALS = ("mitmproxy.proxy", "mitmproxy.addons")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """Runs the contracts of pyproject.toml against the codexbridge package found under `package_parent`."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_import_contracts_hold() -> None:
    run = lint_imports(ROOT / "src")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def lint_with_extra_import(tmp_path: Path, module: str, statement: str) -> subprocess.CompletedProcess[str]:
    """Runs the contracts on a copy of the package in which `module` (a path under codexbridge/) ends with `statement`."""
    copy = tmp_path / "codexbridge"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{statement}  # noqa: E402,F401\n")
    return lint_imports(tmp_path)


def test_an_upward_import_breaks_the_contracts(tmp_path: Path) -> None:
    run = lint_with_extra_import(tmp_path, "wire/sse.py", "from codexbridge.bridge import session")
    assert run.returncode != 0
    assert "codexbridge.wire.sse -> codexbridge.bridge.session" in run.stdout, run.stdout


def test_a_cycle_breaks_the_contracts(tmp_path: Path) -> None:
    run = lint_with_extra_import(tmp_path, "tools/procs.py", "from codexbridge.tools import cluster")
    assert run.returncode != 0
    assert "No cycles are allowed in codexbridge.tools" in run.stdout, run.stdout


def test_only_the_mitm_package_touches_mitmproxy_internals() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "mitm"):
            continue
        for name in imported_modules(path):
            if name.startswith(INTERNALS):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
        if "ctx.master" in path.read_text():
            offenders.append(f"{path.relative_to(ROOT)} reaches into ctx.master")
    assert offenders == []


def test_entry_scripts_are_thin() -> None:
    scripts = sorted((ROOT / "addons").glob("*.py"))
    assert any(p.name == "bridge.py" for p in scripts)
    for path in scripts:
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        last = tree.body[-1]
        assert isinstance(last, ast.Assign) and [t.id for t in last.targets if isinstance(t, ast.Name)] == ["addons"], \
            f"{path.name} must end with `addons = [...]`"
        assert len(path.read_text().splitlines()) <= 15, f"{path.name} is more than a few lines"
        assert all(name.startswith("codexbridge.addons") for name in imported_modules(path)), path.name


def test_the_internals_check_refuses_a_mitmproxy_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy.proxy.layers import http as http_layers
    from mitmproxy.proxy.layers import websocket as ws_layers

    from codexbridge.mitm.compat import IncompatibleMitmproxy, check_internals

    check_internals()  # the installed mitmproxy is supported
    monkeypatch.delattr(ws_layers, "WebSocketMessageInjected")
    with pytest.raises(IncompatibleMitmproxy, match=r"WebSocketMessageInjected is missing.*pip install 'mitmproxy>=12.2,<13'"):
        check_internals()
    monkeypatch.undo()
    monkeypatch.setattr(http_layers.HttpStream, "flow_done", lambda self, event: None)
    with pytest.raises(IncompatibleMitmproxy, match="no longer builds websocket.WebsocketLayer"):
        check_internals()
