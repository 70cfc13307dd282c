"""The bridge runtime: one session per WebSocket, one streaming POST per response, the upstream HTTP/1.1 client."""
