"""The mitmproxy addon classes that the scripts in the top-level addons/ folder load."""
