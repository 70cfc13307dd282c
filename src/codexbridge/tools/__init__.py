"""The command-line tools: run, cluster, bench, probe, demo upstream, inspect, diff, replay."""
