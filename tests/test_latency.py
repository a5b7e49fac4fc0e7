"""runtime/latency.py: the one latency loop (warm-up, minimum calls and time, cap) and its percentiles."""
import time

import pytest

from cirn.runtime.latency import measure_latency, percentiles


def test_percentiles_by_hand():
    assert percentiles([4.0, 1.0, 3.0, 2.0]) == {"p50": 2.5, "p90": pytest.approx(3.7), "p99": pytest.approx(3.97),
                                                 "mean": 2.5, "max": 4.0}
    assert percentiles([]) is None


def test_warmup_calls_are_not_timed_and_iterations_are_a_minimum():
    calls = []
    timing = measure_latency(lambda: calls.append(1), warmup=2, iterations=5)
    assert len(calls) == 7 and timing["calls"] == 5 and len(timing["samples_ms"]) == 5
    assert timing["latency_ms"]["p50"] >= 0 and timing["seconds"] >= 0


def test_seconds_is_a_minimum_and_max_iterations_a_cap():
    timing = measure_latency(lambda: time.sleep(0.01), iterations=1, seconds=0.05)
    assert timing["calls"] >= 4 and timing["seconds"] >= 0.05
    assert timing["latency_ms"]["p50"] >= 10.0
    assert timing["calls_per_s"] == pytest.approx(timing["calls"] / timing["seconds"])
    capped = measure_latency(lambda: None, iterations=3, seconds=60.0, max_iterations=3)
    assert capped["calls"] == 3  # the cap ends the loop long before 60 s


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"seconds": -1.0}, {"warmup": -1},
                                 {"iterations": 5, "max_iterations": 4}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        measure_latency(lambda: None, **bad)
