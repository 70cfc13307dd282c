"""The Responses API's rules, sans-IO: events, conversation history, lanes and steering, headers, keepalive schedule."""
