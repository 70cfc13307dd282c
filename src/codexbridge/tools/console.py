"""What the tools show a person: the rich console on stderr and the Codex config that points at a bridge."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)


def codex_config(base_url: str) -> str:
    """A $CODEX_HOME/config.toml that sends Codex to `base_url` in WebSocket mode."""
    return (
        'model = "gpt-5.5"\n'
        'model_provider = "codexbridge"\n\n'
        "[model_providers.codexbridge]\n"
        'name = "codexbridge"\n'
        f'base_url = "{base_url}"\n'
        'env_key = "OPENAI_API_KEY"\n'
        'wire_api = "responses"\n'
        "supports_websockets = true\n"
    )
