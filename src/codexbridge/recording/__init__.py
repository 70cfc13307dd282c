"""Recordings: the schema, redaction, the per-session writer, and the worker process fed through a pipe."""
