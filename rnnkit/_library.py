"""Loads rnnkit's compiled kernels (rnnkit._C) and describes how they were built."""

from __future__ import annotations

import os
from typing import Any

import torch

from . import __version__

REBUILD = "pip install --no-build-isolation -e .  (from rnnkit's source folder)"

try:
    from . import _C  # noqa: F401  (registers the operators in torch.ops.rnnkit)
except ImportError as error:  # missing, or built against another torch (undefined symbols)
    raise ImportError(
        f"rnnkit's compiled kernels (rnnkit._C) could not be loaded: {error}. "
        f"They must be built against the torch that runs them (torch {torch.__version__} here); "
        f"rebuild with: {REBUILD}"
    ) from error

if _C.torch_version != torch.__version__:
    raise ImportError(
        f"rnnkit's compiled kernels were built against torch {_C.torch_version}, but torch "
        f"{torch.__version__} is running; rebuild with: {REBUILD}"
    )


def cuda_built() -> bool:
    """Whether the CUDA kernels were compiled into rnnkit._C."""
    return bool(_C.with_cuda)


def build_info() -> dict[str, Any]:
    """How rnnkit was built and what it can use here.

    Returns a dict with: version, torch version, the backends compiled (cpu, cuda), compiler
    flags, the SIMD instruction set of the CPU kernels, whether it is a debug build, OpenMP and
    the threads torch uses, the CUDA architectures compiled for, and the GPUs visible now.
    """
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "version": __version__,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "backends": ["cpu"] + (["cuda"] if cuda_built() else []),
        "cpu_capability": _C.cpu_capability,
        "cpu_blas": _C.cpu_blas,
        "cpu_bf16_path": _C.cpu_bf16_path,
        "cxx_flags": _C.cxx_flags,
        "debug": bool(_C.debug),
        "openmp": bool(_C.openmp),
        "threads": torch.get_num_threads(),
        "cuda_archs": [a for a in _C.cuda_archs.split(";") if a],
        "gpus_visible": gpus,
        "library": os.path.abspath(_C.__file__),
    }
