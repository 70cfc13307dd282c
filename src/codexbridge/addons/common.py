"""What the codexbridge addons share: the Codex path option, which addon of each concern is active, flow tests."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions, http

from codexbridge import mitm

if TYPE_CHECKING:
    from codexbridge.recording.pipe import RemoteRecorder

log = logging.getLogger("codexbridge")

BRIDGE, KEEPALIVE, RECORDER, METRICS = "bridge", "keepalive", "recorder", "metrics"
_USES_LAYER = (BRIDGE, KEEPALIVE, RECORDER, METRICS)  # concerns that need codexbridge's WebSocket layer installed

PATH_HELP = (
    "The request path of Codex's Responses endpoint (its base_url plus '/responses'): the WebSocket upgrade on it "
    "is bridged, kept alive and recorded, and POSTs to it are recorded, by whichever codexbridge addons are "
    "loaded. Any other path passes through untouched."
)
FLOW_MESSAGES_HELP = (
    "How many frames each Codex WebSocket flow keeps for mitmweb, -w flow files and other addons: the most "
    "recent ones, so that a session's memory stays bounded however long it runs (the flow's "
    "metadata['codexbridge']['messages_dropped'] counts the older ones dropped). 'all' keeps every frame, as "
    "mitmproxy does; recordings (codexbridge_record) always keep everything."
)
ON_DISCONNECT = ("cancel", "drain")
ON_DISCONNECT_HELP = (
    "What happens to an upstream response in flight when its client disconnects: 'cancel' closes "
    "the upstream request at once; 'drain' reads it to the end (for usage accounting and recording)."
)
MESSAGE_HOOK_HELP = (
    "Run mitmproxy's websocket_message hook for each message of a Codex WebSocket session (client "
    "frames of a bridged session, before they are bridged; both directions in passthrough), so that "
    "other addons can see, change or drop them. Off by default: the hook is a pass over every loaded "
    "addon per message; messages are still kept in the flow for mitmweb and -w files."
)


def add_on_disconnect_option(loader) -> None:
    loader.add_option("codexbridge_on_disconnect", str, "cancel", ON_DISCONNECT_HELP, choices=ON_DISCONNECT)


def add_message_hook_option(loader) -> None:
    loader.add_option("codexbridge_message_hook", bool, False, MESSAGE_HOOK_HELP)


class Registry:
    """The codexbridge addons loaded in this process, per concern, in load order. The first of each concern
    does the work; a second one (the same concern loaded by two scripts) stays idle until the first is unloaded."""

    def __init__(self) -> None:
        self._loaded: dict[str, list[CodexAddon]] = {}
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def add(self, addon: CodexAddon) -> None:
        if not any(self._loaded.get(c) for c in _USES_LAYER):
            mitm.install()
            mitm.overhead.install()
        self._loaded.setdefault(addon.concern, []).append(addon)

    def remove(self, addon: CodexAddon) -> None:
        loaded = self._loaded.get(addon.concern, [])
        if addon in loaded:
            loaded.remove(addon)
        if not any(self._loaded.get(c) for c in _USES_LAYER):
            mitm.uninstall()
            mitm.overhead.uninstall()

    def active(self, concern: str) -> CodexAddon | None:
        loaded = self._loaded.get(concern)
        return loaded[0] if loaded else None

    def bridge_off(self) -> bool:
        """The bridge is loaded and set to leave Codex's traffic alone: so do the addons loaded with it."""
        return self.active(BRIDGE) is not None and ctx.options.codexbridge_mode == "off"

    def plan_websocket(self, flow: http.HTTPFlow, *, but: CodexAddon | None = None) -> None:
        """Lets every active addon but `but` fill in its part of a WebSocket flow's plan (each does it once)."""
        for concern in (KEEPALIVE, RECORDER, METRICS):
            addon = self.active(concern)
            if addon is not None and addon is not but:
                addon.plan_websocket(flow)


registry = Registry()


class CodexAddon:
    """One concern of codexbridge as a mitmproxy addon. Each instance has a name of its own, so that two
    scripts may load the same concern; only the first loaded one acts (see Registry)."""

    concern: ClassVar[str]
    _log_level_set: ClassVar[bool] = False

    def __init__(self) -> None:
        number = registry.next_id()
        self.name = f"codexbridge_{self.concern}" + (f"_{number}" if number > 1 else "")

    @property
    def active(self) -> bool:
        return registry.active(self.concern) is self

    def load(self, loader) -> None:
        """Every concern acts on the Codex path; each subclass adds its own options, then calls this."""
        loader.add_option("codexbridge_path", str, "/v1/responses", PATH_HELP)
        loader.add_option("codexbridge_flow_messages", str, "200", FLOW_MESSAGES_HELP)
        registry.add(self)

    def configure(self, updated: set[str]) -> None:
        if "codexbridge_path" in updated and not ctx.options.codexbridge_path.startswith("/"):
            raise exceptions.OptionsError("codexbridge_path must start with '/', e.g. /v1/responses.")
        if "codexbridge_flow_messages" in updated:
            mitm.set_flow_messages(flow_messages(ctx.options.codexbridge_flow_messages))
        if "termlog_verbosity" in updated or not CodexAddon._log_level_set:
            # mitmproxy's root logger takes everything and hands each record to every addon (add_log):
            # a debug line nobody shows would cost more than the event it describes.
            CodexAddon._log_level_set = True
            verbosity = str(getattr(ctx.options, "termlog_verbosity", "info") or "info").upper()
            log.setLevel(logging.DEBUG if verbosity == "DEBUG" else logging.INFO)

    def plan_websocket(self, flow: http.HTTPFlow) -> None:
        """Fills in this concern's part of the plan of a WebSocket flow about to start (idempotent)."""

    def error(self, flow: http.HTTPFlow) -> None:
        end_plan(flow, flow.error.msg if flow.error else "flow error")

    def unload(self) -> None:
        """Called from each addon's done(): the next addon of the same concern, if any, takes over."""
        registry.remove(self)


def flow_messages(value: str) -> int:
    """The codexbridge_flow_messages option as a window size (0: all)."""
    if value.strip().lower() == "all":
        return 0
    try:
        window = int(value)
    except ValueError:
        window = 0
    if window < 1:
        raise exceptions.OptionsError(f"codexbridge_flow_messages must be 'all' or a number of frames (1 or more), not {value!r}.")
    return window


_HANDSHAKE = {b"upgrade": 0, b"connection": 1, b"sec-websocket-version": 2, b"sec-websocket-key": 3}


def handshake_fields(request: http.Request) -> tuple[str, str, str, str]:
    """The request's Upgrade, Connection, Sec-WebSocket-Version and Sec-WebSocket-Key, each as request.headers.get
    gives it ("" when absent), from one pass over the headers (each get is a pass of its own)."""
    found: list[bytes | None] = [None, None, None, None]
    for name, value in request.headers.fields:
        index = _HANDSHAKE.get(name.lower())
        if index is not None:
            before = found[index]
            found[index] = value if before is None else before + b", " + value  # (as get joins a repeated name)
    upgrade, connection, version, key = found
    return _text(upgrade), _text(connection), _text(version), _text(key)


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "surrogateescape")


def header(headers: http.Headers, name: bytes) -> str:
    """headers.get(name, "") for a lower-case name, without the KeyError that get raises and catches when the name
    is absent (as a 101 has no Content-Type)."""
    found = None
    for key, value in headers.fields:
        if key.lower() == name:
            found = value if found is None else found + b", " + value
    return _text(found)


def upgrade_fields(request: http.Request) -> tuple[str, str] | None:
    """For a WebSocket upgrade, its Sec-WebSocket-Version and Sec-WebSocket-Key ("" when absent); None for any other
    request."""
    if request.method != "GET":
        return None
    upgrade, connection, version, key = handshake_fields(request)
    if upgrade.lower() != "websocket" or "upgrade" not in connection.lower():
        return None
    return version, key


def is_websocket_upgrade(request: http.Request) -> bool:
    return upgrade_fields(request) is not None


@functools.lru_cache(maxsize=1024)
def _path_only(path: str) -> str:
    """A request path without its query (and trailing slashes), remembered: Codex's requests share a few paths."""
    return urlsplit(path).path.rstrip("/")


def on_codex_path(flow: http.HTTPFlow) -> bool:
    return _path_only(flow.request.path) == ctx.options.codexbridge_path.rstrip("/")


def codex_post(flow: http.HTTPFlow) -> bool:
    """A POST to the Codex path that no addon has answered (Codex in HTTP mode)."""
    return flow.response is None and flow.request.method == "POST" and on_codex_path(flow)


def websocket_starting(flow: http.HTTPFlow) -> bool:
    """A Codex WebSocket flow whose layer starts after this response hook (relayed or answered by the bridge)."""
    return (
        flow.websocket is not None
        and flow.response is not None
        and flow.response.status_code == 101
        and on_codex_path(flow)
    )


def upstream_url(flow: http.HTTPFlow) -> str:
    """Where Codex's request goes: the reverse target, or the host the client asked for."""
    if flow.client_conn.proxy_mode.type_name == "reverse":
        return flow.request.url
    return flow.request.pretty_url


def end_plan(flow: http.HTTPFlow, why: str) -> None:
    """A flow that ended before its WebSocket layer started: its plan goes, its recording ends with the reason."""
    plan = mitm.forget_flow(flow)
    recorder: RemoteRecorder | None = plan.recorder if plan is not None else None
    if recorder is not None:
        recorder.error("proxy", why)
        recorder.complete()


StreamFunction = Callable[[bytes], "bytes | Iterable[bytes]"]


def tap_event_stream(response: http.Response, tap: Callable[[bytes], None]) -> bool:
    """Streams an event stream's body through `tap` (each chunk, as it passes), after any stream function set
    before; False, and nothing tapped, for a response that is not streamed that way."""
    if not sse_streamed(response):
        return False
    then = response.stream if callable(response.stream) else None

    def tapped(chunk: bytes) -> bytes | Iterable[bytes]:
        if chunk:
            tap(chunk)
        return chunk if then is None else then(chunk)

    response.stream = tapped
    return True


def sse_streamed(response: http.Response) -> bool:
    """An event stream that is (or by the bridge's codexbridge_stream_sse will be) streamed as it arrives."""
    if not header(response.headers, b"content-type").lower().startswith("text/event-stream"):
        return False
    if response.stream:
        return True
    return "codexbridge_stream_sse" not in ctx.options or bool(ctx.options.codexbridge_stream_sse)
