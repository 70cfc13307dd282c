"""The pytest plugin (entry point `pytest11`): the `codexbridge` marker, its fixtures and command-line options."""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from codexbridge.testing.modes import RECORD_MODES

if TYPE_CHECKING:
    from codexbridge.testing.cassette import Cassette, Options
    from codexbridge.testing.matching import Divergence

# The servers, matching and scrubbing are imported by the fixtures that use them, not when pytest loads the
# plugin: every pytest run in a project that has codexbridge installed loads it.
CASSETTE = pytest.StashKey["Cassette"]()
REPORTED = pytest.StashKey[set[tuple[str, str, str]]]()
WRITTEN = pytest.StashKey[list[Path]]()
FAILED = pytest.StashKey[bool]()
_UNSAFE = re.compile(r"[<>?%*:|\"'/\\\s]")

MARKER = (
    "codexbridge(*recordings, **options): the recorded Responses sessions this test is served (paths relative "
    "to the test file; default recordings/<module>/<test>.jsonl); options as in the codexbridge_config fixture: "
    "record_mode, upstream, match_ignore, allow_unplayed, before_record_request, before_record_response, redact, "
    "elide, bridge_options, speed."
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("codexbridge", "codexbridge: serve recorded Responses sessions to tests")
    group.addoption(
        "--codexbridge-record-mode", choices=RECORD_MODES, default=None,
        help="none (default): only replay, a missing recording fails and nothing reaches the network; once: record "
             "a missing recording from the live upstream, replay an existing one; new_episodes: replay what is "
             "recorded and record what is not; all: record everything anew. A marker's record_mode= wins.",
    )
    group.addoption(
        "--codexbridge-upstream", metavar="URL", default=None,
        help="The live upstream to record from (an origin such as https://api.openai.com), through a real bridge "
             "with recording on.",
    )
    group.addoption(
        "--codexbridge-match-ignore", metavar="FIELD", action="append", default=[],
        help="A request field left out when live requests are compared with the recorded ones, for every test "
             "(repeatable): a name ignores that key at any depth, a dotted path (input.*.id) from the top.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    config.stash[WRITTEN] = []


def pytest_report_header(config: pytest.Config) -> str | None:
    mode = config.getoption("codexbridge_record_mode")
    upstream = config.getoption("codexbridge_upstream")
    if not mode and not upstream:
        return None
    return f"codexbridge: record mode {mode or 'none'}, live upstream {upstream or '(none)'}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    written = config.stash.get(WRITTEN, [])
    if written:
        terminalreporter.write_sep("-", f"codexbridge: {len(written)} recording(s) written")
        for path in written:
            terminalreporter.write_line(str(path))


@pytest.fixture
def codexbridge_config() -> dict[str, Any]:
    """Options for every test that can see this fixture; override it in a conftest.py or a test module
    (like pytest-recording's vcr_config). The marker's keywords win over it."""
    return {}


@pytest.fixture
def codexbridge_recordings_dir(request: pytest.FixtureRequest) -> Path:
    """Where a test's recording is when its marker names none: recordings/<module> beside the test file."""
    return request.path.parent / "recordings" / request.path.stem


@pytest.fixture
def codexbridge_recording_name(request: pytest.FixtureRequest) -> str:
    """The file name (without .jsonl) of a test's default recording: the test's name, with its class."""
    name = request.node.name if request.cls is None else f"{request.cls.__name__}.{request.node.name}"
    return _UNSAFE.sub("-", name)


def _options(request: pytest.FixtureRequest, config: dict[str, Any], marker: dict[str, Any]) -> Options:
    from codexbridge.testing.cassette import OPTION_NAMES, Options, RecordingError

    for where, given in (("codexbridge_config", config), ("the codexbridge marker", marker)):
        unknown = sorted(set(given) - OPTION_NAMES)
        if unknown:
            raise pytest.UsageError(f"{where}: unknown option(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(sorted(OPTION_NAMES))}")
    for key in ("match_ignore", "redact", "bridge_options"):  # one string stands for a list of one
        for given in (config, marker):
            if isinstance(given.get(key), str):
                given[key] = [given[key]]
    settings: dict[str, Any] = {
        "record_mode": request.config.getoption("codexbridge_record_mode") or "none",
        "upstream": request.config.getoption("codexbridge_upstream"),
        **config,
        **marker,
        "match_ignore": [*request.config.getoption("codexbridge_match_ignore"), *config.get("match_ignore", ()),
                         *marker.get("match_ignore", ())],
    }
    try:
        return Options(**settings)
    except RecordingError as e:
        raise pytest.UsageError(str(e)) from None


@pytest.fixture
def codexbridge(
    request: pytest.FixtureRequest,
    codexbridge_config: dict[str, Any],
    codexbridge_recordings_dir: Path,
    codexbridge_recording_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cassette]:
    """The test's recordings: their URLs (`upstream_url`, `bridge_url`), divergences and record mode."""
    from codexbridge.testing.cassette import Cassette, RecordingError
    from codexbridge.testing.matching import report

    marker = request.node.get_closest_marker("codexbridge")
    args, kwargs = (marker.args, marker.kwargs) if marker is not None else ((), {})
    options = _options(request, dict(codexbridge_config), dict(kwargs))
    here = request.path.parent
    paths = [(here / Path(p)).resolve() for p in args] or [codexbridge_recordings_dir / f"{codexbridge_recording_name}.jsonl"]
    cassette = Cassette(paths, options, tmp_path_factory.mktemp("codexbridge"))
    request.node.stash[CASSETTE] = cassette
    request.node.stash[REPORTED] = set()
    try:
        yield cassette
    finally:
        try:
            keep = not request.node.stash.get(FAILED, False)
            request.config.stash.setdefault(WRITTEN, []).extend(cassette.close(keep=keep))
        except RecordingError as e:
            problem = str(e)
        else:
            problem = ""
        if problem:
            pytest.fail(f"codexbridge: {problem}", pytrace=False)
    late = _unreported(request.node)
    if late:
        pytest.fail(report(late), pytrace=False)


def _url(cassette: Cassette, which: str) -> str:
    from codexbridge.testing.cassette import RecordingError

    try:
        return str(getattr(cassette, which))
    except RecordingError as e:
        problem = str(e)
    pytest.fail(f"codexbridge: {problem}", pytrace=False)


@pytest.fixture
def codexbridge_upstream(codexbridge: Cassette) -> str:
    """Base URL (http://127.0.0.1:PORT/v1) of an upstream serving the test's recordings over POST + SSE and the
    WebSocket mode (in a recording mode: a recording bridge in front of the live upstream)."""
    return _url(codexbridge, "upstream_url")


@pytest.fixture
def codexbridge_bridge(codexbridge: Cassette) -> str:
    """Base URL of a real bridge (mitmdump with the shipped addons) in front of `codexbridge_upstream`."""
    return _url(codexbridge, "bridge_url")


def _key(d: Divergence) -> tuple[str, str, str]:
    return d.what, d.recording, d.summary


def _unreported(item: pytest.Item) -> list[Divergence]:
    cassette = item.stash.get(CASSETTE, None)
    if cassette is None:
        return []
    seen = item.stash.setdefault(REPORTED, set())
    fresh = [d for d in cassette.problems() if _key(d) not in seen]
    seen.update(_key(d) for d in fresh)
    return fresh


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """When the test's body is done, a request that diverged from the recording fails it, with the diff."""
    try:
        yield
    except BaseException:
        item.stash[FAILED] = True
        problems = _unreported(item)
        if problems:
            from codexbridge.testing.matching import report

            item.add_report_section("call", "codexbridge", report(problems))
        raise
    problems = _unreported(item)
    if problems:
        from codexbridge.testing.matching import report

        item.stash[FAILED] = True
        pytest.fail(report(problems), pytrace=False)
