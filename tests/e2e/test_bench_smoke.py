"""`codexbridge bench --quick` runs end to end: every configuration and workload yields a figure.

A smoke test, not a performance test: no figure is compared with a threshold here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import BIN

WORKLOADS = ("burst", "paced", "first", "handshake", "idle", "storm")
SSE_ONLY = ("burst", "paced", "first")  # no upgrade handshake and no pings over POST + SSE
CONFIGS = {"a_sse": SSE_ONLY, "a_ws": WORKLOADS, "a_wss": ("paced", "handshake"), "b_sse": SSE_ONLY, "b_ws": WORKLOADS, "c": WORKLOADS,
           "d": WORKLOADS, "e": WORKLOADS, "f": WORKLOADS,
           "g": ("burst", "paced")}  # a quick run measures g only where its paired figures are
PAIRED = {"d": ("recording_cost", "recording_cpu"), "f": ("tls_cpu",),  # against the reference bridge
          "g": ("metrics_cost", "metrics_cpu")}


def test_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [str(BIN / "codexbridge"), "bench", "--quick", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "codexbridge bench" in proc.stdout and "targets" in proc.stdout, proc.stdout
    for label in ("a direct SSE", "a direct WS", "a direct WS TLS", "b mitmproxy WS", "c bridge", "d bridge+rec", "e passthrough",
                  "f bridge TLS", "g bridge+metrics"):
        assert label in proc.stdout

    report = json.loads(out.read_text())
    assert report["machine"]["cpu_count"] >= 1
    assert report["machine"]["mitmproxy"] and report["machine"]["python"]
    assert {tuple(c) for c in report["cells"]} == {(k, w) for k, ws in CONFIGS.items() for w in ws}
    for key, workloads in CONFIGS.items():
        for workload in workloads:
            figure = report["figures"][key].get(workload)
            assert isinstance(figure, (int, float)), f"no figure for {key} × {workload}: {report['results'][key]}"
            assert key in report["cpu"] and workload in report["cpu"][key]
    # the raw samples behind the medians are there too
    assert report["results"]["c"]["first"]["raw_ms"]
    assert report["results"]["c"]["idle"]["opened"] > 0
    assert report["results"]["c"]["idle"]["pings"] > 0
    assert report["results"]["e"]["idle"]["pings"] > 0
    for key, names in PAIRED.items():
        for name in names:
            figure = report["figures"][key].get(name)
            assert isinstance(figure, (int, float)), f"no paired figure {name} for {key}: {report['results'][key]}"
    assert report["results"]["f"]["idle"]["pings"] > 0, "pings reach a client over TLS"
    assert report["results"]["c"]["storm"]["n"] == report["params"]["storm"]
    scrapes = report["results"]["g"]["metrics_scrapes"]
    assert scrapes["scrapes"] >= 5 and scrapes["error_count"] == 0, scrapes  # g was scraped while it ran...
    assert scrapes["sessions_counted"] >= report["params"]["sessions"], scrapes  # ...and counted its sessions
    targets = {t["target"] for t in report["targets"]}
    assert any("TLS" in t for t in targets) and any("recording worker" in t for t in targets), targets
    assert sum("metrics on" in t for t in targets) == 2, targets
    assert any("opening at once" in t for t in targets), targets
