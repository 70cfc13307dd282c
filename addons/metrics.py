"""mitmdump -s entry script: only the Prometheus metrics (codexbridge_metrics=HOST:PORT), for the addons loaded beside it."""

from codexbridge.addons.metrics import Metrics

addons = [Metrics()]
