"""The machine a benchmark runs on: its description (CPU, GPU, versions, load), the devices and
dtypes it offers, and whether a case fits in its memory.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Any, Sequence

import torch

from .. import __version__, footprint
from .._library import build_info
from .case import DTYPE_NAMES, IMPLS, BenchError, Case

#: The torch dtype of each name in DTYPE_NAMES.
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """What produced the numbers: CPU, threads, GPU, versions, load."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rnnkit": __version__,
        "platform": platform.platform(),
    }
    try:
        info["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        b = build_info()
        info["rnnkit_cpu_capability"] = b["cpu_capability"]
        info["rnnkit_backends"] = b["backends"]
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        info["rnnkit_build"] = f"unavailable: {error}"
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def core_rates(dtype: torch.dtype = torch.float32, seconds: float = 0.1) -> dict[int, float]:
    """Each CPU's own matrix-product rate now, in GFLOP/s: one thread pinned to it in turn, the
    median time of a 256x512 by 512x2048 product in `dtype` over about `seconds`.

    On a virtual machine the cores this process sees can run at different speeds, and each can
    change speed within seconds (a host core shared with another guest). A static split of work
    then waits for the slower core, so a timing taken while the cores are uneven says little
    about the code. Benchmarks record these rates next to their times. Empty where the process
    cannot pin itself (no ``os.sched_setaffinity``)."""
    if not hasattr(os, "sched_setaffinity"):
        return {}
    cpus = sorted(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    a = torch.randn(256, 512).to(dtype)
    b = torch.randn(512, 2048).to(dtype)
    flop = 2 * 256 * 512 * 2048
    rates: dict[int, float] = {}
    torch.set_num_threads(1)
    try:
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            torch.mm(a, b)
            times: list[float] = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end or len(times) < 5:
                start = time.perf_counter()
                torch.mm(a, b)
                times.append(time.perf_counter() - start)
            rates[cpu] = flop / statistics.median(times) / 1e9
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)
    return rates


def cores_even(rates: dict[int, float], within: float = 0.8) -> bool | None:
    """Whether the slowest core's rate is at least `within` of the fastest's (None: no rates)."""
    if not rates:
        return None
    return min(rates.values()) >= within * max(rates.values())


def machine_slug(device: str) -> str:
    """A short file-name-safe name for this machine, e.g. ``cpu-intel-xeon-2t``."""
    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"cpu {cpu_name()} {torch.get_num_threads()}t"
    words = "".join(c.lower() if c.isalnum() else " " for c in name).split()
    drop = {"r", "tm", "processor", "cpu", "core", "nvidia", "with"}
    words = [w for w in words if w not in drop]
    return "-".join((["cpu"] if device != "cuda" else ["cuda"]) + words)[:60]


def check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise BenchError(f"unknown device {device!r}; expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("CUDA was asked for, but no GPU is visible here "
                         "(torch.cuda.is_available() is False); use --device cpu")


def validate_impls(names: Sequence[str]) -> list[str]:
    """The names, checked; a BenchError listing the valid ones otherwise."""
    bad = [n for n in names if n not in IMPLS]
    if bad:
        raise BenchError(f"unknown implementation {', '.join(map(repr, bad))}; valid: "
                         f"{', '.join(IMPLS)}")
    return list(dict.fromkeys(names))


# ---- memory: will a case fit? --------------------------------------------------------------------
def estimate_bytes(case: Case, modes: Sequence[str], check: bool = True) -> int:
    """A rough upper estimate of the peak memory of benchmarking this case: rnnkit.footprint's
    layer_values in the case's dtype; the float64 check doubles it."""
    size = torch.empty((), dtype=DTYPES[case.dtype]).element_size()
    values = footprint.layer_values(case.cell, case.input_size, case.hidden_size,
                                    case.num_layers, case.directions, case.seq_len * case.batch,
                                    "training" in modes)
    total = values * size
    if check:
        total += values * 8  # the float64 reference
    return int(total)


def check_fits(case: Case, modes: Sequence[str], check: bool = True) -> None:
    need = estimate_bytes(case, modes, check)
    ok, have = footprint.fits(need, case.device)
    if not ok:
        raise BenchError(
            f"{case.label} would need about {need / 2**30:.1f} GiB ({', '.join(modes)}, estimated "
            f"before allocating); {case.device} has {have / 2**30:.1f} GiB available: use a "
            f"smaller --seq-len, --batch-size or --hidden-size")
