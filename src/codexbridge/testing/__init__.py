"""A pytest plugin that serves recorded Responses sessions to tests, with record modes (loaded by pytest only)."""

from codexbridge.testing.matching import Divergence, Matcher
from codexbridge.testing.modes import RECORD_MODES, RecordMode
from codexbridge.testing.scrub import RecordedRequest, RecordedResponse

__all__ = ["RECORD_MODES", "Divergence", "Matcher", "RecordMode", "RecordedRequest", "RecordedResponse"]
