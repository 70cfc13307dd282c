"""mitmdump entry scripts (`mitmdump -s addons/NAME.py`), installed with the package as codexbridge.scripts."""
