"""Timing and memory: interleaved samples (perf_counter on CPU, CUDA events on GPU), their summary,
and the peak memory of one call.
"""

from __future__ import annotations

import ctypes
import math
import statistics
import time
from typing import Callable, Optional, Sequence

import torch


def _timer(device: str) -> Callable[[Callable[[], None], int], float]:
    """Returns time(fn, number) -> seconds per call."""
    if device == "cuda":
        def time_cuda(fn: Callable[[], None], number: int) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(number):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / number
        return time_cuda

    def time_cpu(fn: Callable[[], None], number: int) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number

    return time_cpu


def interleaved(fns: dict[str, Callable[[], None]], device: str = "cpu", warmup: int = 2,
                repeats: int = 7, min_sample_s: float = 0.02
                ) -> dict[str, tuple[list[float], int]]:
    """Times each callable: warm-up, then ``repeats`` rounds of A B C ...; each sample runs a
    callable ``number`` times (calibrated in warm-up so a sample lasts about min_sample_s).
    Returns name -> (seconds per call of each sample, number)."""
    timer = _timer(device)
    numbers = {}
    for name, fn in fns.items():
        t = 0.0
        for _ in range(max(1, warmup)):
            t = timer(fn, 1)
        numbers[name] = max(1, min(1000, math.ceil(min_sample_s / max(t, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timer(fn, numbers[name]))
    return {name: (samples[name], numbers[name]) for name in fns}


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, min, max and quartiles, in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if len(ms) >= 4:
        q = statistics.quantiles(ms, n=4)
        q1, q3 = q[0], q[2]
    else:
        q1, q3 = ms[0], ms[-1]
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
            "q1_ms": q1, "q3_ms": q3}


# ---- memory ------------------------------------------------------------------------------------
def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_mb(fn: Callable[[], None], device: str) -> Optional[float]:
    """Peak memory growth of one call: max allocated on GPU; on CPU, resident-set growth (the
    high-water mark reset through /proc/self/clear_refs). None where it cannot be measured."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    if base is None or peak is None:
        return None
    return max(0, peak - base) / 1024
