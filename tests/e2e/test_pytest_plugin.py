"""The pytest plugin as its users run it: generated test projects run by pytest in a subprocess against a loopback
upstream that counts what reaches it, and the README's examples in a fresh venv outside the checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from codexbridge.recording.schema import load
from codexbridge.tools.procs import free_port, listening
from support import ROOT, need
from support.codex import codex_binary
from support.fresh_install import FreshInstall
from support.upstream import Upstream


@dataclass
class PytestRun:
    returncode: int
    output: str
    outcomes: dict[str, tuple[str, str]]  # test name -> (passed | failed | error | skipped, message and details)

    def outcome(self, name: str) -> str:
        return self.outcomes[name][0]

    def text(self, name: str) -> str:
        return self.outcomes[name][1]


def run_pytest(project: Path, *args: str, python: str = sys.executable, env: dict[str, str] | None = None,
               timeout: float = 300, name: str = "run") -> PytestRun:
    """pytest in `project` as its own rootdir, one outcome per test from its JUnit XML; runs at the same time in
    the same project need names of their own."""
    report = project / f"junit-{name}.xml"
    proc = subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
                           f"--junitxml={report}", f"--basetemp={project / f'.pytest-tmp-{name}'}", *args],
                          cwd=project, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    outcomes: dict[str, tuple[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            state, text = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    state, text = child.tag, f"{child.get('message', '')}\n{child.text or ''}"
                    break
            outcomes[case.get("name", "")] = (state, text)
    return PytestRun(proc.returncode, proc.stdout + proc.stderr, outcomes)


def run_together(project: Path, runs: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, PytestRun]:
    """Independent pytest runs (name -> arguments, environment) in the same project at the same time."""
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run_pytest, project, *args, env=env, name=name)
                   for name, (args, env) in runs.items()}
        return {name: future.result() for name, future in futures.items()}


def merged(*runs: PytestRun) -> PytestRun:
    """Runs of disjoint tests as one: every outcome, the output of each."""
    return PytestRun(max(r.returncode for r in runs), "\n".join(r.output for r in runs),
                     {k: v for r in runs for k, v in r.outcomes.items()})


def reached(upstream: Upstream, test: str) -> int:
    """How many requests of one generated test reached the live upstream (its `x-test` header says whose)."""
    return sum(1 for r in upstream.requests() if any(n.lower() == "x-test" and v == test for n, v in r["headers"]))


SDK_HELPERS = '''
import os

import pytest
from openai import OpenAI


def ask(base_url, test, text, **extra):
    client = OpenAI(base_url=base_url, api_key="sk-test-key-0123456789", default_headers={"x-test": test})
    with client.responses.connect() as connection:
        connection.response.create(model="gpt-5.5", input=text, **extra)
        for event in connection:
            if event.type in ("response.completed", "error"):
                return event


def turns(base_url, test, count, **extra):
    for i in range(count):
        event = ask(base_url, test, f"[[reply:answer {i}]] question {i}", **extra)
        assert event.type == "response.completed", event
        assert event.response.output_text == f"answer {i}"
'''

MATRIX_TEST = '''
@pytest.mark.codexbridge(record_mode="{mode}")
def test_{mode}_{state}(codexbridge_bridge):
    turns(codexbridge_bridge, "{mode}_{state}", {count})
'''

# Straight to the upstream over the WebSocket: a session beyond the recorded ones goes live as a whole.
DIRECT_TEST = '''
@pytest.mark.codexbridge(record_mode="new_episodes")
def test_new_episodes_direct(codexbridge_upstream):
    turns(codexbridge_upstream, "new_episodes_direct", 2)
'''

# mode, recording present, then: outcome, requests that reach the live upstream, recording files afterwards.
# A present recording holds one turn and the test makes two (one connection each): the second is what each
# mode must decide about.
MATRIX = [
    ("none", True, "failure", 0, 1),
    ("once", True, "failure", 0, 1),
    ("new_episodes", True, "passed", 1, 2),
    ("all", True, "passed", 2, 2),
    ("none", False, "error", 0, 0),
    ("once", False, "passed", 1, 1),
    ("new_episodes", False, "passed", 1, 1),
    ("all", False, "passed", 1, 1),
]


def test_record_modes_each_with_the_recording_present_and_absent(shared: SharedRuns) -> None:
    assert shared.recorded.outcome("test_once_seed") == "passed", shared.recorded.output
    seed = shared.project / "recordings" / "test_seed" / "test_once_seed.jsonl"
    assert load(str(seed)).complete
    folder = shared.project / "recordings" / "test_matrix"
    run = shared.changed

    for mode, present, outcome, network, files in MATRIX:
        name = f"test_{mode}_{'present' if present else 'absent'}"
        assert run.outcome(name) == outcome, (name, run.text(name))
        assert shared.matrix_requests[name[5:]] == network, name
        recorded = sorted(p.name for p in folder.glob(f"{name}*.jsonl"))
        assert len(recorded) == files, (name, recorded)
        if present and mode in ("none", "once", "new_episodes"):
            assert (folder / f"{name}.jsonl").read_bytes() == seed.read_bytes(), f"{name} changed its recording"
    # the test's own assertion fails first; the divergence follows in its report section
    assert run.output.count("First divergence: POST #2 to /v1/responses: not in the recording") == 2, run.output
    assert "is missing and record mode 'none' never records" in run.text("test_none_absent")
    assert "answer 0" in (folder / "test_all_present.jsonl").read_text()  # recorded anew: both sessions
    assert "answer 1" in (folder / "test_all_present.2.jsonl").read_text()
    assert (folder / "test_all_present.jsonl").read_bytes() != seed.read_bytes()
    appended = load(str(folder / "test_new_episodes_present.2.jsonl"))
    assert appended.header.mode == "http" and "question 1" in appended.events[0].model_dump_json()
    assert run.outcome("test_new_episodes_direct") == "passed", run.text("test_new_episodes_direct")
    assert shared.matrix_requests["new_episodes_direct"] == 1
    session = load(str(folder / "test_new_episodes_direct.2.jsonl"))  # the second connection, recorded whole
    assert session.header.mode == "bridge" and session.complete and "question 1" in session.model_dump_json()

    offline = shared.replayed  # no live upstream at all
    for name in ("test_new_episodes_present", "test_new_episodes_direct", "test_new_episodes_absent"):
        assert offline.outcome(name) == "passed", offline.text(name)
    assert offline.outcome("test_once_absent") == "passed", offline.text("test_once_absent")
    assert shared.replayed_requests == 0, "a replay reached the upstream"


DIVERGE = '''
@pytest.mark.parametrize("through", ["codexbridge_upstream", "codexbridge_bridge"])
def test_prompt(request, through):
    event = ask(request.getfixturevalue(through), "diverge", os.environ.get("PROMPT", "[[reply:fine]] how are you"))
    assert event.type == "response.completed", event
'''


SCRUB = '''
CUSTOMER = "ACME Corp"


def hide_customer(message):
    message.body = message.body.replace(CUSTOMER, "<customer>")


@pytest.fixture
def codexbridge_config():
    return {"before_record_request": hide_customer, "before_record_response": hide_customer}


@pytest.mark.parametrize("through", ["codexbridge_upstream", "codexbridge_bridge"])
def test_scrubbed(request, through):
    event = ask(request.getfixturevalue(through), "scrub", f"[[reply:report for {CUSTOMER}]] write the report")
    assert event.type == "response.completed", event
    assert event.response.output_text.startswith("report for ")
'''


MATCHING = '''
RUN = os.environ.get("RUN", "1")
TURNS = int(os.environ.get("TURNS", "2"))


def test_strict(codexbridge_bridge):
    turns(codexbridge_bridge, "strict", TURNS, metadata={"run": RUN})


@pytest.mark.codexbridge(match_ignore=["metadata"], allow_unplayed=True)
def test_lenient(codexbridge_bridge):
    turns(codexbridge_bridge, "lenient", TURNS, metadata={"run": RUN})
'''


@dataclass
class SharedRuns:
    """One project holding the record-mode matrix and the divergence, scrubbing and matching tests, recorded once
    and then run as each test here needs: one inner pytest run serves several of them (each generated test reads
    only its own environment variables, and the options a run adds change nothing for the others), and runs that
    share no recording go at the same time (the upstream tells their requests apart by the x-test header)."""

    project: Path
    recorded: PytestRun  # seed, diverge, scrub, matching: --codexbridge-record-mode=once from the live upstream
    recorded_requests: dict[str, int]  # requests of that run per generated test (its x-test header)
    changed: PytestRun  # matrix with the live upstream; diverge and matching with PROMPT and RUN changed
    matrix_requests: dict[str, int]  # requests of that run per matrix test
    replayed: PytestRun  # diverge and scrub unchanged, the matrix's new_episodes and once_absent offline
    replayed_requests: int  # requests that reached the live upstream in that run
    ignored: PytestRun  # matching, RUN changed, --codexbridge-match-ignore=metadata.run
    fewer: PytestRun  # matching, TURNS=1
    later_requests: int  # requests of diverge, scrub and matching that reached the live upstream after recording


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> SharedRuns:
    project = tmp_path_factory.mktemp("shared-project")
    (project / "test_diverge.py").write_text(SDK_HELPERS + DIVERGE)
    (project / "test_scrub.py").write_text(SDK_HELPERS + SCRUB)
    (project / "test_matching.py").write_text(SDK_HELPERS + MATCHING)
    (project / "test_seed.py").write_text(SDK_HELPERS + MATRIX_TEST.format(mode="once", state="seed", count=1))
    ours = ("diverge", "scrub", "strict", "lenient")
    upstream.reset()
    live = ["--codexbridge-record-mode=once", f"--codexbridge-upstream={upstream.url}"]
    recorded = merged(*run_together(project, {"seed": (["test_seed.py", "test_diverge.py", *live], {}),
                                              "scrub": (["test_scrub.py", "test_matching.py", *live], {})}).values())
    counts = {name: reached(upstream, name) for name in ours}

    # the matrix: a present recording holds the seed's one turn
    seed = project / "recordings" / "test_seed" / "test_once_seed.jsonl"
    folder = project / "recordings" / "test_matrix"
    folder.mkdir(parents=True)
    tests = []
    for mode, present, *_ in MATRIX:
        state = "present" if present else "absent"
        tests.append(MATRIX_TEST.format(mode=mode, state=state, count=2 if present else 1))
        if present and seed.exists():
            shutil.copyfile(seed, folder / f"test_{mode}_{state}.jsonl")
    if seed.exists():
        shutil.copyfile(seed, folder / "test_new_episodes_direct.jsonl")
    (project / "test_matrix.py").write_text(SDK_HELPERS + "".join(tests) + DIRECT_TEST)

    upstream.reset()
    # diverge and matching run in record mode none: the live upstream is given for the matrix alone
    changed = merged(*run_together(project, {
        "matrix": (["test_matrix.py", f"--codexbridge-upstream={upstream.url}"], {}),
        "changed": (["test_diverge.py", "test_matching.py", f"--codexbridge-upstream={upstream.url}"],
                    {"PROMPT": "[[reply:fine]] how are you today", "RUN": "2"})}).values())
    names = [f"{mode}_{'present' if present else 'absent'}" for mode, present, *_ in MATRIX]
    matrix = {name: reached(upstream, name) for name in [*names, "new_episodes_direct"]}
    later = sum(reached(upstream, name) for name in ours)
    upstream.reset()
    # offline, all three: what reaches the upstream while they run counts against each
    offline = run_together(project, {
        "replayed": (["test_diverge.py", "test_scrub.py", "test_matrix.py",
                      "-k", "prompt or scrubbed or new_episodes or once_absent"], {}),
        "ignored": (["test_matching.py", "--codexbridge-match-ignore=metadata.run"], {"RUN": "2"}),
        "fewer": (["test_matching.py"], {"TURNS": "1"})})
    offline_requests = upstream.stats()["requests"]
    later += offline_requests
    return SharedRuns(project, recorded, counts, changed, matrix, offline["replayed"], offline_requests,
                      offline["ignored"], offline["fewer"], later)


def test_a_changed_request_fails_with_the_first_divergence_as_a_diff(shared: SharedRuns) -> None:
    recorded, changed = shared.recorded, shared.changed
    for name in ("test_prompt[codexbridge_upstream]", "test_prompt[codexbridge_bridge]"):
        assert recorded.outcome(name) == "passed", recorded.output
    for name, what in (("test_prompt[codexbridge_upstream]", "client frame #1 of the WebSocket session"),
                       ("test_prompt[codexbridge_bridge]", "POST #1 to /v1/responses")):
        assert changed.outcome(name) == "failure", changed.output
        text = changed.text(name)
        assert (f"First divergence: {what}: $.input: expected '[[reply:fine]] how are you', "
                f"came '[[reply:fine]] how are you today'") in text, text
        assert f"recording: recordings/test_diverge/{name}.jsonl" in text
        assert "--- recorded\n+++ came" in text
        assert '-  "input": "[[reply:fine]] how are you",\n+  "input": "[[reply:fine]] how are you today",' in text
    for name in ("test_prompt[codexbridge_upstream]", "test_prompt[codexbridge_bridge]"):
        assert shared.replayed.outcome(name) == "passed", "the unchanged test still replays"


def test_scrub_hooks_rewrite_the_recording_and_a_scrubbed_recording_still_matches(shared: SharedRuns) -> None:
    for name in ("test_scrubbed[codexbridge_upstream]", "test_scrubbed[codexbridge_bridge]"):
        assert shared.recorded.outcome(name) == "passed", shared.recorded.output
    files = sorted((shared.project / "recordings" / "test_scrub").glob("*.jsonl"))
    assert len(files) == 2
    for path in files:
        text = path.read_text()
        assert "ACME" not in text, f"{path.name} still names the customer"
        assert "report for <customer>" in text and "write the report" in text
        assert "sk-test-key-0123456789" not in text and "<redacted>" in text  # redaction stays on
        assert load(str(path)).complete
    assert any('"upstream_chunk"' in p.read_text() and "report for <customer>" in p.read_text() for p in files)
    for name in ("test_scrubbed[codexbridge_upstream]", "test_scrubbed[codexbridge_bridge]"):
        # live requests go through the same hook before comparing
        assert shared.replayed.outcome(name) == "passed", shared.replayed.output
    assert shared.later_requests == 0


def test_matching_options_per_test_and_for_the_whole_run(shared: SharedRuns) -> None:
    for name in ("test_strict", "test_lenient"):
        assert shared.recorded.outcome(name) == "passed", shared.recorded.output

    other_run = shared.changed
    assert other_run.outcome("test_strict") == "failure"
    assert "$.metadata.run: expected '1', came '2'" in other_run.text("test_strict")
    assert other_run.outcome("test_lenient") == "passed", other_run.text("test_lenient")
    ignored = shared.ignored
    assert ignored.returncode == 0, ignored.output

    fewer = shared.fewer
    assert fewer.outcome("test_strict") == "failure"
    assert ("WebSocket session: recorded but never requested\n  recording: recordings/test_matching/test_strict.2.jsonl"
            in fewer.text("test_strict")), fewer.text("test_strict")
    assert fewer.outcome("test_lenient") == "passed", fewer.text("test_lenient")
    assert shared.recorded_requests["strict"] + shared.recorded_requests["lenient"] == 4
    assert shared.later_requests == 0  # only the recording run


# -- the README's examples, in a fresh venv outside the checkout ---------------------------------


def readme_examples() -> dict[str, str]:
    """The Python files of the README's "Testing with recordings" section, by the name on their first line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing with recordings", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)
    return {block.splitlines()[0].removeprefix("# "): block for block in blocks if block.startswith("# ")}


@pytest.fixture
def fresh_venv(fresh_install: FreshInstall) -> Path:
    """The python of a new venv outside the checkout with the wheel, pytest and openai installed (not editable)."""
    return fresh_install.python


@pytest.fixture
def demo_upstream(fresh_venv: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The installed package's demo upstream, started from the fresh venv."""
    port = free_port()
    with open(tmp_path / "demo-upstream.log", "wb") as log:
        proc = subprocess.Popen([str(fresh_venv), "-m", "codexbridge.tools.demo_upstream", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    from codexbridge.tools.procs import wait_for_port

    assert wait_for_port("127.0.0.1", port, proc=proc), (tmp_path / "demo-upstream.log").read_text()
    yield f"http://127.0.0.1:{port}", proc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.codex
def test_readme_examples_record_once_then_replay_offline_and_fail_on_a_changed_request(
        fresh_venv: Path, demo_upstream: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    codex = codex_binary()
    need("the Codex CLI (scripts/setup.sh --test installs it)", codex is not None)
    project = tmp_path / "project"
    project.mkdir()
    assert not project.resolve().is_relative_to(ROOT)
    examples = readme_examples()
    assert set(examples) == {"test_codex_recorded.py", "test_two_lanes_recorded.py", "conftest.py"}
    for name in ("test_codex_recorded.py", "test_two_lanes_recorded.py"):  # no conftest.py: the plugin alone
        (project / name).write_text(examples[name])
    env = {"CODEX": str(codex), "PATH": f"{fresh_venv.parent}{os.pathsep}{os.environ['PATH']}", "CI": ""}
    url, upstream = demo_upstream

    recorded = run_pytest(project, "--codexbridge-record-mode=once", f"--codexbridge-upstream={url}",
                          python=str(fresh_venv), env=env)
    assert recorded.returncode == 0, recorded.output
    files = sorted(p.name for p in (project / "recordings").rglob("*.jsonl"))
    assert files == ["codex-runs-a-tool.jsonl", "test_two_lanes.jsonl"], files
    assert "2 recording(s) written" in recorded.output

    upstream.terminate()
    upstream.wait(timeout=10)
    assert not listening("127.0.0.1", int(url.rsplit(":", 1)[1]))
    offline = run_pytest(project, python=str(fresh_venv), env=env)
    assert offline.returncode == 0, offline.output
    assert offline.outcomes == {"test_codex_runs_a_tool": ("passed", ""), "test_two_lanes": ("passed", "")}

    for name, old, new in (("test_codex_recorded.py", '"run echo"', '"run echo twice"'),
                           ("test_two_lanes_recorded.py", '"Shorter, please"', '"Shorter still, please"')):
        path = project / name
        path.write_text(path.read_text().replace(old, new))
    changed = run_pytest(project, python=str(fresh_venv), env=env)
    codex_failure, lanes_failure = changed.text("test_codex_runs_a_tool"), changed.text("test_two_lanes")
    assert changed.outcome("test_codex_runs_a_tool") == "failure", changed.output
    assert "First divergence: POST #1 to /v1/responses" in codex_failure, codex_failure
    assert "expected 'run echo', came 'run echo twice'" in codex_failure
    assert '-          "text": "run echo",' in codex_failure and '+          "text": "run echo twice",' in codex_failure
    assert changed.outcome("test_two_lanes") == "failure", changed.output
    assert "First divergence: client frame #3 of the WebSocket session" in lanes_failure, lanes_failure
    assert "expected 'Shorter, please', came 'Shorter still, please'" in lanes_failure
