"""The recordings of one test: where they live, the processes that serve or record them, what diverged."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from codexbridge.recording.schema import Recording, load
from codexbridge.testing.matching import Divergence, Matcher
from codexbridge.testing.modes import RECORD_MODES, Plan, plan
from codexbridge.testing.scrub import RequestHook, ResponseHook, dumps, scrub, write_atomically
from codexbridge.testing.server import CassetteServer, LoopThread
from codexbridge.tools.procs import Child, free_port, mitmdump_command, wait_for_port


class RecordingError(Exception):
    """The recordings cannot be served or written as asked (missing file, no live upstream to record from)."""


@dataclass
class Options:
    """What a test may set through `codexbridge_config`, the marker's keywords or the command line."""

    record_mode: str = "none"
    upstream: str | None = None  # the live upstream (an origin, e.g. https://gateway.example) to record from
    match_ignore: list[str] = field(default_factory=list)  # request fields left out of the comparison
    allow_unplayed: bool = False  # recorded requests the test never made are not a failure
    before_record_request: RequestHook | None = None
    before_record_response: ResponseHook | None = None
    redact: list[str] = field(default_factory=list)  # extra patterns redacted in new recordings
    elide: int = 0  # new recordings elide JSON strings longer than this (0: keep everything)
    bridge_options: list[str] = field(default_factory=list)  # extra mitmdump `--set` options for the bridges
    speed: float = 0.0  # 0: answer as fast as possible; 1: at the recorded pace

    def __post_init__(self) -> None:
        if self.record_mode not in RECORD_MODES:
            raise RecordingError(f"unknown record mode {self.record_mode!r}: choose one of {', '.join(RECORD_MODES)}")


OPTION_NAMES = frozenset(f.name for f in fields(Options))


def numbered(path: Path, n: int) -> Path:
    """The n-th session of a recording named `path`: x.jsonl, then x.2.jsonl, x.3.jsonl ..."""
    return path.with_name(f"{path.stem}.{n}{path.suffix}")


def numbered_siblings(path: Path) -> list[Path]:
    pattern = re.compile(re.escape(path.stem) + r"\.(\d+)" + re.escape(path.suffix))
    found = [(int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
             if (m := pattern.fullmatch(p.name)) and int(m.group(1)) >= 2]
    return [p for _, p in sorted(found)]


def session_files(paths: Sequence[Path]) -> list[Path]:
    """The files of a test's recordings, in session order: the named ones, then the last one's numbered siblings."""
    return [*paths, *numbered_siblings(paths[-1])] if paths else []


def targets(paths: Sequence[Path], start: int, count: int) -> list[Path]:
    return [paths[i] if i < len(paths) else numbered(paths[-1], i - len(paths) + 2) for i in range(start, start + count)]


def label(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Cassette:
    """The recordings of one test, served by a replay upstream (and a real bridge in front of it, on demand),
    or recorded through a recording bridge in front of the live upstream, as the record mode says.

    Nothing starts until a URL is asked for; `close()` stops everything and writes what was recorded."""

    def __init__(self, paths: Sequence[Path], options: Options, workdir: Path) -> None:
        self.paths = [Path(p) for p in paths]
        self.options = options
        self.workdir = workdir
        self.matcher = Matcher(options.match_ignore, options.before_record_request)
        self.written: list[Path] = []
        self._plan: Plan | None = None
        self._loop: LoopThread | None = None
        self._server: CassetteServer | None = None
        self._server_port = 0
        self._recorder: Child | None = None
        self._record_dir: Path | None = None
        self._bridge: Child | None = None
        self._existing = 0

    # -- what the test sees ------------------------------------------------------------------

    @property
    def record_mode(self) -> str:
        return self.options.record_mode

    @property
    def plan(self) -> Plan:
        self._start()
        assert self._plan is not None
        return self._plan

    @property
    def upstream_url(self) -> str:
        """Base URL (…/v1) of the upstream serving the recordings: POST + SSE and the WebSocket mode."""
        return self._recording_only() or f"http://127.0.0.1:{self._server_port}/v1"

    @property
    def bridge_url(self) -> str:
        """Base URL (…/v1) of a real bridge (mitmdump with the shipped addons) in front of that upstream."""
        if recording_only := self._recording_only():
            return recording_only
        if self._bridge is None:
            self._bridge = self._mitmdump("bridge", f"http://127.0.0.1:{self._server_port}", self.options.bridge_options)
        return f"http://127.0.0.1:{self._bridge.port}/v1"

    def _recording_only(self) -> str | None:
        """Starts what the plan needs; when nothing is replayed, the recording bridge's base URL (it is then
        both the upstream and the bridge)."""
        self._start()
        if self._server is not None:
            return None
        assert self._recorder is not None
        return f"http://127.0.0.1:{self._recorder.port}/v1"

    @property
    def divergences(self) -> list[Divergence]:
        """Requests that did not go as recorded so far (clear it in a test that expects them)."""
        return self._server.divergences if self._server is not None else []

    @property
    def forwarded(self) -> int:
        """Requests and connections the replay could not answer and sent to the live upstream (new_episodes)."""
        return self._server.forwarded if self._server is not None else 0

    @property
    def started(self) -> bool:
        return self._plan is not None

    def use(self, *paths: str | os.PathLike[str]) -> None:
        """Serve these recordings instead of the marker's (before the first URL is asked for)."""
        if self.started:
            raise RecordingError("codexbridge.use() must come before the first use of the upstream or bridge URL")
        self.paths = [Path(p).resolve() for p in paths]

    def problems(self) -> list[Divergence]:
        """The divergences, then (unless allowed) the recorded requests nobody made."""
        if self._server is None:
            return []
        unplayed_allowed = self.options.allow_unplayed or self.options.record_mode == "new_episodes"
        return [*self._server.divergences, *([] if unplayed_allowed else self._server.unplayed())]

    def recordings(self) -> list[tuple[Path, Recording]]:
        """The recorded sessions this test replays, in order."""
        return [(p, load(str(p))) for p in session_files(self.paths)]

    # -- start and stop ----------------------------------------------------------------------

    def _start(self) -> None:
        if self._plan is not None:
            return
        if not self.paths:
            raise RecordingError("no recording is named for this test")
        decided = plan(self.options.record_mode, all(p.exists() for p in self.paths))
        names = ", ".join(label(p) for p in self.paths)
        if decided.missing:
            raise RecordingError(f"the recording {names} is missing and record mode 'none' never records: run with "
                                 "--codexbridge-record-mode=once and --codexbridge-upstream URL to record it")
        if decided.record and not self.options.upstream and decided.replay:
            decided = Plan(replay=True, record=False, missing=False)  # new_episodes offline: nothing new may go out
        if decided.record and not self.options.upstream:
            raise RecordingError(f"record mode '{self.options.record_mode}' records {names} from the live upstream: "
                                 "say which with --codexbridge-upstream URL (or upstream= in the marker or config)")
        self._plan = decided
        try:
            if decided.record:
                assert self.options.upstream is not None
                self._record_dir = Path(tempfile.mkdtemp(prefix="recorded-", dir=self.workdir))
                # One upstream response at a time per connection: a recording does not say which POST an
                # interleaved upstream read belongs to, and a replay through a bridge must know it.
                record = [f"codexbridge_record={self._record_dir}", f"codexbridge_record_elide={self.options.elide}",
                          "codexbridge_max_active=1", *(f"codexbridge_record_redact={p}" for p in self.options.redact)]
                self._recorder = self._mitmdump("recorder", self.options.upstream,
                                                [*record, *self.options.bridge_options])
            if decided.replay:
                sessions = self.recordings()
                self._existing = len(sessions)
                live = f"http://127.0.0.1:{self._recorder.port}" if self._recorder is not None else None
                self._server = CassetteServer([(label(p), r) for p, r in sessions], self.matcher, live=live,
                                              speed=self.options.speed)
                self._loop = LoopThread()
                self._server_port = self._loop.run(self._server.start())
        except BaseException:
            self._stop_processes()
            raise

    def _mitmdump(self, name: str, upstream: str, options: Sequence[str]) -> Child:
        port = free_port()
        log = self.workdir / f"{name}-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(mitmdump_command(upstream, port, list(options)), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        child = Child(name, proc, port, log)
        # mitmdump opens its port even when a script failed to load, then exits: its log tells
        started = wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        if not started or any(s in child.tail(200) for s in ("error in script", "Error logged during startup")):
            child.stop()
            raise RecordingError(f"the {name} (mitmdump) did not start:\n{child.tail()}")
        return child

    def _stop_processes(self) -> None:
        if self._bridge is not None:
            self._bridge.stop()
        if self._loop is not None and self._server is not None:
            try:
                self._loop.run(self._server.stop(), timeout=10)
            finally:
                self._loop.close()
            self._loop = None
        if self._recorder is not None:
            self._recorder.stop()  # SIGINT: the recorder closes its files as complete

    def close(self, keep: bool = True) -> list[Path]:
        """Stops the servers and bridges; in a recording mode, scrubs and writes what was recorded (unless
        `keep` is false: a failed test leaves its recordings as they were)."""
        if self._plan is None:
            return []
        self._stop_processes()
        if not keep or not self._plan.record or self._record_dir is None:
            return []
        recorded = sorted(self._record_dir.glob("*.jsonl"))
        if not recorded:
            return []
        start = self._existing if self._plan.replay else 0
        if not self._plan.replay:
            for stale in numbered_siblings(self.paths[-1]):
                stale.unlink()
        for source, target in zip(recorded, targets(self.paths, start, len(recorded)), strict=True):
            self._write(source, target)
            self.written.append(target)
        return self.written

    def _write(self, source: Path, target: Path) -> None:
        recording = load(str(source))  # a recording the replay could not read must not be written
        before_request, before_response = self.options.before_record_request, self.options.before_record_response
        if before_request is None and before_response is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        else:
            write_atomically(target, dumps(scrub(recording, before_request, before_response)))

    def summary(self) -> dict[str, Any]:
        """What the test asked of its recordings so far, and what they hold."""
        server = self._server
        return {
            "record_mode": self.options.record_mode,
            "replayed": bool(self._plan and self._plan.replay),
            "recorded": bool(self._plan and self._plan.record),
            "posts": server.posts_seen if server else 0,  # POSTs that came
            "posts_recorded": len(server.posts) if server else 0,
            "connections": server.connections_seen if server else 0,  # WebSocket connections that came
            "turns": sum(s.report.turns_served for s in server.sessions) if server else 0,  # client frames served
            "turns_recorded": sum(len(s.turns) for s in server.sessions) if server else 0,
            "forwarded": self.forwarded,
            "divergences": [d.summary for d in self.divergences],
            "written": [str(p) for p in self.written],
        }
