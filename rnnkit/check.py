"""Numerical verification of every compiled operator against rnnkit.reference.

Used by ``rnnkit check`` and by the tests. Each case builds fresh random float64 inputs (batch
1 and odd hidden sizes included), then checks, on one device:
  values     outputs and final states equal the reference's (float64, 1e-10)
  gradients  gradients of every input equal the reference's (float64, 1e-10)
  gradcheck  torch.autograd.gradcheck of the operator
  opcheck    torch.library.opcheck (schema, fake tensor, autograd registration, AOT dispatch)

In bfloat16 (the same cases, inputs rounded to it) values and gradients are held to the house rule
for a low-precision dtype instead: against the reference in float64 on the same inputs,
``max|rnnkit - ref64| <= 2 * max|reference in bfloat16 - ref64| + eps * (1 + max|ref64|)``
(eps: the dtype's machine epsilon); gradcheck needs float64 and does not apply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import functional as F
from . import reference as R
from ._library import cuda_built

TOL = 1e-10  # float64 tolerance, absolute and relative

#: The dtypes rnnkit check verifies: float64 to TOL, bfloat16 by the low-precision rule.
DTYPES = (torch.float64, torch.bfloat16)
LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass
class Case:
    """One operator on one configuration: op(*args) and the reference that must agree."""

    name: str  # operator name in torch.ops.rnnkit
    label: str  # what configuration this is
    args: tuple  # arguments of torch.ops.rnnkit.<name>
    ours: Callable[..., tuple[Tensor, ...]]  # the outputs to compare, from rnnkit
    theirs: Callable[..., tuple[Tensor, ...]]  # the same outputs, from the reference


@dataclass
class Result:
    case: Case
    device: str
    ok: bool
    detail: str
    seconds: float


def _packed(T: int, N: int, gen: torch.Generator) -> Tensor:
    """Random non-increasing batch sizes of T steps, the first N (sequences of varied length)."""
    lengths = torch.randint(1, T + 1, (N,), generator=gen).sort(descending=True).values
    lengths[0] = T
    return torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.long)


def cases(device: str = "cpu", dtype: torch.dtype = torch.float64, seed: int | None = None) -> list[Case]:
    """The check cases for every operator, on fresh random inputs."""
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31, ()).item()))

    def rand(*shape, grad=True):
        t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).to(device, dtype)
        return t.requires_grad_(grad)

    out: list[Case] = []
    I, H, P_ = 5, 7, 3  # input features, hidden (odd on purpose), projection
    T, N = 4, 3
    # N=20: a batch above the small-batch path's 16 rows, over T=4 steps, so that the per-step
    # products take the weight packed for them (in bfloat16: the AMX tiles where the CPU has them)
    for label, packed, reverse, proj, B in (("padded", False, False, False, N),
                                            ("packed, reverse, proj_size", True, True, True, N),
                                            ("padded, N=20", False, False, False, 20)):
        bs = _packed(T, B, gen) if packed else None
        x = rand(int(bs.sum()), I) if packed else rand(T, B, I)
        R_ = P_ if proj else H
        w = (rand(4 * H, I), rand(4 * H, R_), rand(4 * H), rand(4 * H), rand(R_, H) if proj else None)
        args = (x, bs, rand(B, R_), rand(B, H), *w, reverse)
        out.append(Case("lstm", label, args,
                        lambda *a: _flat(F.lstm_layer(a[0], a[1], (a[2], a[3]), a[4:9], a[9])),
                        lambda *a: _flat(R.lstm_layer(a[0], a[1], (a[2], a[3]), a[4:9], a[9]))))
        w = (rand(3 * H, I), rand(3 * H, H), rand(3 * H), rand(3 * H) if not packed else None, None)
        args = (x, bs, rand(B, H), *w[:4], reverse)
        out.append(Case("gru", label.replace(", proj_size", ", no b_hh"), args,
                        lambda *a: _flat(F.gru_layer(a[0], a[1], (a[2],), (*a[3:7], None), a[7])),
                        lambda *a: _flat(R.gru_layer(a[0], a[1], (a[2],), (*a[3:7], None), a[7]))))
        act = "relu" if packed else "tanh"
        args = (x, bs, rand(B, H), rand(H, I), rand(H, H), rand(H), rand(H), act, reverse)
        out.append(Case("rnn", label.replace(", proj_size", "") + f", {act}", args,
                        lambda *a: _flat(F.rnn_layer(a[7])(a[0], a[1], (a[2],), (*a[3:7], None), a[8])),
                        lambda *a: _flat(R.rnn_layer(a[7])(a[0], a[1], (a[2],), (*a[3:7], None), a[8]))))
    # cells: batch 1 and batch 3
    for n in (1, N):
        x, h, c = rand(n, I), rand(n, H), rand(n, H)
        out.append(Case("lstm_cell", f"N={n}", (x, h, c, rand(4 * H, I), rand(4 * H, H), rand(4 * H), rand(4 * H)),
                        lambda *a: F.lstm_cell(a[0], (a[1], a[2]), *a[3:]),
                        lambda *a: R.lstm_cell(*a)))
        out.append(Case("gru_cell", f"N={n}", (x, h, rand(3 * H, I), rand(3 * H, H), rand(3 * H), rand(3 * H)),
                        lambda *a: (F.gru_cell(*a),), lambda *a: (R.gru_cell(*a),)))
        for act in ("tanh", "relu"):
            out.append(Case("rnn_cell", f"N={n}, {act}",
                            (x, h, rand(H, I), rand(H, H), rand(H), rand(H), act),
                            lambda *a: (F.rnn_cell(*a),), lambda *a: (R.rnn_cell(*a),)))
    return out


def _flat(result) -> tuple[Tensor, ...]:
    out, states = result
    return (out, *states)


def _close(a: Tensor, b: Tensor, tol: float) -> float | None:
    """None when a and b agree to tol (absolute and relative), else the largest difference."""
    if a.shape != b.shape:
        return float("inf")
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    return None if torch.allclose(a, b, rtol=tol, atol=tol) else diff


def run_case(case: Case, tol: float = TOL, gradcheck: bool = True, opcheck: bool = True) -> Result:
    """Runs every check of one case; the first failure is reported in detail."""
    first = next(a for a in case.args if isinstance(a, Tensor))
    device = str(first.device)
    start = time.perf_counter()
    if first.dtype in LOW_PRECISION:
        return _run_low_precision(case, opcheck, device, start)
    tensors = [a for a in case.args if isinstance(a, Tensor) and a.requires_grad]
    try:
        ours, theirs = case.ours(*case.args), case.theirs(*case.args)
        for k, (a, b) in enumerate(zip(ours, theirs)):
            bad = _close(a, b, tol)
            if bad is not None:
                return Result(case, device, False, f"output {k} differs from the reference by {bad:.3g}",
                              time.perf_counter() - start)
        seeds = [torch.randn_like(o) for o in ours]
        g_ours = torch.autograd.grad(ours, tensors, seeds, allow_unused=True)
        g_theirs = torch.autograd.grad(theirs, tensors, seeds, allow_unused=True)
        for k, (a, b) in enumerate(zip(g_ours, g_theirs)):
            bad = _close(a if a is not None else torch.zeros_like(tensors[k]),
                         b if b is not None else torch.zeros_like(tensors[k]), tol)
            if bad is not None:
                return Result(case, device, False, f"gradient {k} differs from the reference by {bad:.3g}",
                              time.perf_counter() - start)
        if gradcheck and not torch.autograd.gradcheck(lambda *t: case.ours(*_put(case.args, t)),
                                                      tensors, raise_exception=False):
            return Result(case, device, False, "gradcheck failed", time.perf_counter() - start)
        if opcheck:
            op = getattr(torch.ops.rnnkit, case.name).default
            torch.library.opcheck(op, case.args)
    except Exception as error:  # a check that raises is a failed check, reported with its message
        return Result(case, device, False, f"{type(error).__name__}: {error}".splitlines()[0],
                      time.perf_counter() - start)
    return Result(case, device, True, "values, gradients" + (", gradcheck" if gradcheck else "")
                  + (", opcheck" if opcheck else ""), time.perf_counter() - start)


def _beyond_rule(ours: Tensor, peer: Tensor, ref64: Tensor, dtype: torch.dtype) -> str | None:
    """None when ours keeps the low-precision rule (module docstring), else what went wrong."""
    if ours.shape != ref64.shape:
        return f"shape {tuple(ours.shape)}, expected {tuple(ref64.shape)}"
    if not ref64.numel():
        return None
    floor = torch.finfo(dtype).eps * (1 + ref64.abs().max().item())
    error = (ours.double() - ref64).abs().max().item()
    allowed = 2 * (peer.double() - ref64).abs().max().item() + floor
    return None if error <= allowed else (f"error {error:.3g} against float64, more than "
                                          f"{allowed:.3g} (2 x the reference's + floor)")


def _run_low_precision(case: Case, opcheck: bool, device: str, start: float) -> Result:
    """run_case in bfloat16 or float16: values and gradients by the low-precision rule."""
    wide = tuple(a.detach().double().requires_grad_(a.requires_grad)
                 if isinstance(a, Tensor) and a.is_floating_point() else a for a in case.args)
    dtype = next(a for a in case.args if isinstance(a, Tensor)).dtype
    tensors = [a for a in case.args if isinstance(a, Tensor) and a.requires_grad]
    wide_tensors = [a for a in wide if isinstance(a, Tensor) and a.requires_grad]
    try:
        ours, peer, ref64 = case.ours(*case.args), case.theirs(*case.args), case.theirs(*wide)
        for k, (a, p, r) in enumerate(zip(ours, peer, ref64)):
            bad = _beyond_rule(a, p, r, dtype)
            if bad is not None:
                return Result(case, device, False, f"output {k}: {bad}", time.perf_counter() - start)
        seeds = [torch.randn_like(r) for r in ref64]
        low = [s.to(dtype) for s in seeds]
        g_ours = torch.autograd.grad(ours, tensors, low, allow_unused=True)
        g_peer = torch.autograd.grad(peer, tensors, low, allow_unused=True)
        g_ref = torch.autograd.grad(ref64, wide_tensors, seeds, allow_unused=True)
        for k, (a, p, r) in enumerate(zip(g_ours, g_peer, g_ref)):
            zero = torch.zeros_like(wide_tensors[k])
            bad = _beyond_rule(zero if a is None else a, zero if p is None else p,
                               zero if r is None else r, dtype)
            if bad is not None:
                return Result(case, device, False, f"gradient {k}: {bad}",
                              time.perf_counter() - start)
        if opcheck:
            torch.library.opcheck(getattr(torch.ops.rnnkit, case.name).default, case.args)
    except Exception as error:  # a check that raises is a failed check, reported with its message
        return Result(case, device, False, f"{type(error).__name__}: {error}".splitlines()[0],
                      time.perf_counter() - start)
    rule = f"values, gradients ({str(dtype).removeprefix('torch.')} rule)"
    return Result(case, device, True, rule
                  + (", opcheck" if opcheck else ""), time.perf_counter() - start)


def _put(args: tuple, tensors: tuple) -> tuple:
    """args with its grad-requiring tensors replaced, in order, by tensors."""
    it = iter(tensors)
    return tuple(next(it) if isinstance(a, Tensor) and a.requires_grad else a for a in args)


def devices() -> list[str]:
    """The devices with compiled kernels that can run here."""
    return ["cpu"] + (["cuda"] if cuda_built() and torch.cuda.is_available() else [])
