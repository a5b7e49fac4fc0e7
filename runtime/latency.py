"""The one latency loop: the runtime's --benchmark, the benchmarks and export's parity timings measure with it.

numpy and the standard library only, so a deploy-only install has it.
"""
import time

import numpy as np


def percentiles(values_ms):
    """{'p50', 'p90', 'p99', 'mean', 'max'} of a list of milliseconds (None when empty)."""
    if not values_ms:
        return None
    values = np.asarray(values_ms)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean()), "max": float(values.max())}


def measure_latency(call, warmup=0, iterations=1, seconds=0.0, max_iterations=None):
    """Time `call()` after `warmup` untimed calls: calls until both `iterations` calls and `seconds` have passed,
    stopping at `max_iterations` (None: no cap; a 1 ms call would otherwise run `seconds` x 1000 times).

    Returns {'calls', 'seconds' (of the timed loop), 'calls_per_s', 'latency_ms': percentiles of one call,
    'samples_ms': every call's time}.
    """
    if iterations < 1 or seconds < 0 or warmup < 0:
        raise ValueError(f"need iterations >= 1, seconds >= 0, warmup >= 0; got {iterations}, {seconds}, {warmup}")
    if max_iterations is not None and max_iterations < iterations:
        raise ValueError(f"max_iterations {max_iterations} is below iterations {iterations}")
    for _ in range(warmup):
        call()
    samples_ms = []
    start = time.perf_counter()
    while len(samples_ms) < iterations or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        call()
        samples_ms.append((time.perf_counter() - t0) * 1000.0)
        if max_iterations is not None and len(samples_ms) >= max_iterations:
            break
    total_s = time.perf_counter() - start
    return {"calls": len(samples_ms), "seconds": total_s,
            "calls_per_s": len(samples_ms) / total_s if total_s > 0 else None,
            "latency_ms": percentiles(samples_ms), "samples_ms": samples_ms}
