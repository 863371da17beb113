"""The two dropouts of AWD-LSTM (Merity et al., 2017) that torch.nn lacks: DropConnect on the
recurrent weights (weight drop) and variational dropout (Gal & Ghahramani, 2016), one mask per
sequence reused at every time step.

Both draw from torch's global generator, in the order documented on ``rnnkit.LSTM``, and scale
what they keep by 1/(1 - p) as ``torch.nn.functional.dropout`` does, so that the expected value is
unchanged and evaluation needs no rescaling.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor


def check_probability(p: object, what: str) -> float:
    """p as a float, or ValueError unless it is a number in [0, 1)."""
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 <= p < 1:
        raise ValueError(f"{what}: expected a probability of zeroing in [0, 1), got {p!r}")
    return float(p)


def keep_mask(like: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """A mask of ``shape`` with ``like``'s dtype and device: 1/(1 - p) with probability 1 - p,
    else 0 (torch.nn.functional.dropout's scaling)."""
    mask = torch.empty(shape, dtype=like.dtype, device=like.device)
    return mask.bernoulli_(1.0 - p).div_(1.0 - p)


def drop_weight(weight: Tensor, p: float) -> Tensor:
    """DropConnect: ``weight * mask`` with a fresh mask of weight's shape (an autograd op, so the
    gradient reaches ``weight`` multiplied by the same mask)."""
    return weight * keep_mask(weight, tuple(weight.shape), p)


def sequence_rows(batch_sizes: Tensor, device: torch.device) -> Tensor:
    """For packed data (P, F) with ``batch_sizes`` (T,): the sequence (in the packed, sorted
    order) each of the P rows belongs to, (P,) int64."""
    batch = int(batch_sizes[0]) if len(batch_sizes) else 0
    present = torch.arange(batch).unsqueeze(0) < batch_sizes.unsqueeze(1)  # (T, N)
    # Packed rows run time step by time step, sequences 0..batch_sizes[t]-1 within each.
    return present.nonzero()[:, 1].to(device)


def variational(x: Tensor, batch_sizes: Tensor | None, p: float) -> Tensor:
    """x times one mask per sequence, shared by every time step.

    x: (T, N, F) time-major, or packed (P, F) with batch_sizes (T,). The mask is (N, F), drawn
    once per call.
    """
    if batch_sizes is None:
        return x * keep_mask(x, (x.shape[1], x.shape[2]), p).unsqueeze(0)
    batch = int(batch_sizes[0]) if len(batch_sizes) else 0
    mask = keep_mask(x, (batch, x.shape[1]), p)
    return x * mask.index_select(0, sequence_rows(batch_sizes, x.device))
