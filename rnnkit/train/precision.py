"""The arithmetic of a training run's forward pass: ``--precision fp32`` (float32 throughout) or
``bf16`` (the forward, loss included, under torch.autocast to bfloat16; the model, its gradients
and the optimiser stay float32). ``auto`` is resolved to one of them when the run starts, and the
run's config.json records the one used, so that resuming keeps it.
"""

from __future__ import annotations

import contextlib

import torch

from ..hardware import fast_bf16
from .errors import UserError

#: Whether --precision auto may choose bf16 (where the device multiplies bfloat16 in hardware).
#: The rule: only if the default run's final loss in bf16 is within 0.02 of fp32's, measured on
#: a quiet machine and recorded in docs/training.md ("Measurements"): 1.6328 in bf16 against
#: 1.6330 in fp32 (2026-11-30, AMD EPYC with AVX512-BF16), and 1.6326 against 1.6330
#: (2026-12-01, Intel Xeon with AMX), so auto may choose bf16.
AUTO_CHOOSES_BF16 = True

#: The autocast dtype of each precision that autocasts.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32 or bf16: ``precision`` itself, or what auto chooses on ``device``. UserError for bf16
    on a GPU without bfloat16 (torch.autocast refuses it there)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not "
                        "support bfloat16; use --precision fp32")
    if precision != "auto":
        return precision
    return "bf16" if AUTO_CHOOSES_BF16 and fast_bf16(device) else "fp32"


def forward_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training forward runs in: autocast for bf16, nothing for fp32."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
