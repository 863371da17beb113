"""What a machine offers for bfloat16: the CPU's low-precision instructions, and whether a device
multiplies bfloat16 in hardware (``rnnkit info``, ``rnnkit train --precision auto``).

The CPU's flags are read from /proc/cpuinfo where there is one (Linux); elsewhere torch's own
probes answer for the features they know (AVX512-BF16, AMX tiles) and the rest are unknown.
"""

from __future__ import annotations

import torch

#: The CPU features that matter to bfloat16 and float16 products, by their /proc/cpuinfo names.
CPU_BF16_FEATURES = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_fp16")

#: The features that make a CPU's bfloat16 products fast (in hardware, not emulated in float).
FAST_BF16 = ("amx_bf16", "avx512_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags (the first "flags" line of ``path``), or None where unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _torch_probe(name: str) -> bool | None:
    """torch's own probe of one feature (private helpers of torch.cpu; None where absent)."""
    probe = {"avx512_bf16": "_is_avx512_bf16_supported",
             "amx_bf16": "_is_amx_tile_supported"}.get(name)  # AMX tiles come with AMX-BF16
    fn = getattr(torch.cpu, probe, None) if probe else None
    try:
        return bool(fn()) if fn else None
    except RuntimeError:
        return None


def cpu_bf16_features(path: str = "/proc/cpuinfo") -> dict[str, bool | None]:
    """Each of CPU_BF16_FEATURES: True (present), False (absent) or None (unknown here)."""
    flags = cpu_flags(path)
    if flags is not None:
        return {name: name in flags for name in CPU_BF16_FEATURES}
    return {name: _torch_probe(name) for name in CPU_BF16_FEATURES}


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CPU with AMX-BF16 or AVX512-BF16, a
    GPU for which torch.cuda.is_bf16_supported() holds."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    features = cpu_bf16_features()
    return any(features[name] for name in FAST_BF16)
