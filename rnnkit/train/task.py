"""The Task interface: what the model reads, what it predicts, its loss and its metrics.

The batch a task returns for step ``s`` is a function of (seed, s, rank) alone, so a resumed run
sees exactly the batches an uninterrupted run would have seen. The tasks themselves are in
tasks.py and seq2seq.py; registry.py builds one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .models import ModelSpec


@dataclass
class Batch:
    """One training or evaluation batch (time-major)."""

    x: Tensor  # inputs: (T, N) int64 tokens or (T, N, F) float features
    y: Tensor  # targets: (T, N) per-step, (N,) per-sequence classes, or (N,) regression values
    lengths: Optional[Tensor] = None  # (N,) true lengths for padded batches, else None
    tokens: int = 0  # input tokens in the batch (for tokens per second)
    reset: bool = False  # charlm: start of an epoch, forget the carried hidden state
    target_lengths: Optional[Tensor] = None  # (N,) true lengths of padded targets (seq2seq)


def permutation(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def macro_f1(pred: Tensor, gold: Tensor) -> float:
    """Macro-averaged F1 over the classes present in gold or predictions."""
    classes = torch.unique(torch.cat([pred, gold]))
    scores = []
    for c in classes:
        tp = ((pred == c) & (gold == c)).sum().item()
        fp = ((pred == c) & (gold != c)).sum().item()
        fn = ((pred != c) & (gold == c)).sum().item()
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / max(1, len(scores)))


class Task:
    """Base class. Subclasses set ``spec``, ``meta``, ``steps_per_epoch``."""

    name = ""
    carries_state = False  # True when the hidden state flows from one batch to the next
    spec: ModelSpec
    meta: dict
    steps_per_epoch: int

    def batch(self, step: int) -> Batch:
        raise NotImplementedError

    def loss(self, model, batch: Batch, carry=None) -> tuple[Tensor, Any]:
        """Mean loss of ``batch`` and the state to carry to the next batch (or None)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model, device: torch.device, data: Optional[str] = None) -> dict:
        raise NotImplementedError
