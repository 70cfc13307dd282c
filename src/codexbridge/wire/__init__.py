"""Byte formats, sans-IO: Server-Sent Events, HTTP/1.1 responses, WebSocket frames."""
