"""Named sets of cases (``rnnkit bench --suite``), with the implementations and repeats that fit in
a few minutes.

Free of torch, so that the command line can offer the names in ``--help`` without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .case import GPU_ONLY, BenchError, Case


@dataclass
class Suite:
    """A named set of cases, with the implementations and repeats that fit in a few minutes."""

    name: str
    about: str
    cases: Callable[[str, str], list[Case]]   # (cell, device) -> cases
    impls: Optional[Sequence[str]] = None     # None: Settings' default
    repeats: int = 7
    gpu_only: bool = False


def _fastrnns(cell: str, device: str) -> list[Case]:
    return [Case(cell, 100, 64, 512, 512, device=device)]


def _small_batch(cell: str, device: str) -> list[Case]:
    return [Case(cell, 100, n, 256, 256, device=device) for n in (1, 4, 16)]


def _sweep(cell: str, device: str) -> list[Case]:
    return [Case(cell, 50, n, h, h, device=device) for n in (1, 16, 64)
            for h in (128, 256, 512, 1024)]


def _packed(cell: str, device: str) -> list[Case]:
    return [Case(cell, 100, 64, 256, 256, min_len=25, device=device)]


def _long(cell: str, device: str) -> list[Case]:
    return [Case(cell, 1024, 16, 768, 768, dtype="float16", device=device)]


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("fastrnns", "T=100 N=64 I=H=512, 1 layer (PyTorch's RNN benchmark defaults)",
          _fastrnns, repeats=5),
    Suite("small-batch", "T=100 I=H=256, N in 1, 4, 16", _small_batch),
    Suite("sweep", "T=50, N in {1, 16, 64} x I=H in {128, 256, 512, 1024}", _sweep,
          impls=("rnnkit", "torch", "cell-loop"), repeats=5),
    # reference-compile is left out: one compiled graph per distinct batch size (76 here)
    Suite("packed", "N=64 I=H=256, lengths spread over 25-100 (PackedSequence)", _packed,
          impls=("rnnkit", "torch", "torch-nocudnn", "cell-loop", "reference", "reference-jit")),
    Suite("long", "N=16 T=1024 I=H=768, float16 (GPU only)", _long,
          impls=("rnnkit", "torch", "torch-nocudnn", "cell-loop", "reference"), repeats=5,
          gpu_only=True),
]}


def suite_cases(name: str, cell: str, device: str) -> tuple[Suite, list[Case]]:
    if name not in SUITES:
        raise BenchError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    suite = SUITES[name]
    if suite.gpu_only and device != "cuda":
        raise BenchError(f"suite {name!r} runs on GPU only ({suite.about}); use --device cuda")
    return suite, suite.cases(cell, device)


def suite_plan(name: str, cell: str, device: str, impls: Optional[Sequence[str]],
               repeats: Optional[int], dtype: Optional[str]
               ) -> tuple[list[Case], Optional[list[str]], int]:
    """(cases, implementations, repeats) of suite ``name``: the user's ``impls``, ``repeats`` and
    ``dtype`` where given, else the suite's (its GPU-only implementations dropped on CPU)."""
    suite, cases = suite_cases(name, cell, device)
    chosen = list(impls) if impls is not None else suite.impls
    if chosen is not None and impls is None:
        chosen = [i for i in chosen if device == "cuda" or i not in GPU_ONLY]
    if dtype:
        for case in cases:
            case.dtype = dtype
    return cases, chosen, repeats or suite.repeats
