"""`codexbridge bench`'s estimators: percentiles, and paired ratios taken pair by pair."""

from __future__ import annotations

from codexbridge.tools.bench import paired_ratio, pct


def test_a_paired_ratio_is_the_median_of_the_pairs_own_ratios() -> None:
    # the machine drifts between pairs (everything 1.5x slower in the middle pair): each pair still says x1.2
    subject, reference = [1.2, 1.8, 1.2], [1.0, 1.5, 1.0]
    assert paired_ratio(subject, reference) == 1.2
    # the ratio of the medians would have said x1.2 here too, but not when the drift hits one side's median only
    assert paired_ratio([1.2, 1.2, 2.4], [1.0, 2.0, 2.0]) == 1.2


def test_pairs_that_no_longer_line_up_fall_back_to_the_medians() -> None:
    assert paired_ratio([2.0, 2.0, 2.0], [1.0, 1.0]) == 2.0
    assert paired_ratio([], []) is None
    assert paired_ratio([1.0], [0.0]) is None


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 50) == 50.0 and pct(values, 95) == 95.0 and pct(values, 100) == 100.0
    assert pct([], 50) is None


def test_the_probes_of_several_paced_runs_are_pooled() -> None:
    from codexbridge.tools.bench import merge_probes

    first = {"p50_ms": 2.0, "raw_ms": [1.0, 2.0, 3.0], "errors": ["x"], "error_count": 1, "n": 3}
    second = {"p50_ms": 40.0, "raw_ms": [40.0, 50.0], "errors": [], "error_count": 0, "n": 2}
    both = merge_probes(first, second)
    assert both["raw_ms"] == [1.0, 2.0, 3.0, 40.0, 50.0] and both["n"] == 5 and both["rounds"] == 2
    assert both["p50_ms"] == 3.0  # the pooled sample's median, not a median of the runs' medians
    assert both["error_count"] == 1 and both["errors"] == ["x"]
