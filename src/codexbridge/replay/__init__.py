"""Replay: the matching rules, a server that plays a recording's upstream, and a client that plays its client."""
