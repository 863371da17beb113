"""The machine a benchmark runs on: its description (CPU, GPU, versions, load), the devices and
dtypes it offers, and whether a case fits in its memory.
"""

from __future__ import annotations

import datetime
import os
import platform
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
