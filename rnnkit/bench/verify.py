"""Inputs, one call, and the check of an implementation against the float64 reference before it
is timed (outputs and, in training, the gradients of the input, the states and every parameter).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence

from .case import Case
from .impls import reference_call
from .machine import DTYPES


@dataclass
class Inputs:
    x: Any                    # (T, N, I) tensor or PackedSequence
    leaf: Tensor              # the tensor whose gradient is checked (x, or the packed data)
    states: list[Tensor]      # h0 (and c0): (L*D, N, H)
    grad_out: Tensor          # the output's upstream gradient
    grad_states: list[Tensor]


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed + 1)
    T, N, H = case.seq_len, case.batch, case.hidden_size
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    x = rnd(T, N, case.input_size)
    nstates = 2 if case.cell == "lstm" else 1
    states = [0.5 * rnd(case.num_layers * case.directions, N, H) for _ in range(nstates)]
    if case.packed:
        packed = pack_padded_sequence(x, torch.tensor(case.lengths()), enforce_sorted=True)
        leaf = packed.data.contiguous()
        x = torch.nn.utils.rnn.PackedSequence(leaf, packed.batch_sizes)
        rows = leaf.shape[0]
        grad_out = rnd(rows, case.directions * H)
    else:
        leaf = x
        grad_out = rnd(T, N, case.directions * H)
    grad_states = [rnd(*s.shape) for s in states]
    return Inputs(x, leaf, states, grad_out, grad_states)


def _with_leaf(inputs: Inputs, requires_grad: bool) -> Inputs:
    """Fresh leaf tensors (so that gradients start from nothing)."""
    leaf = inputs.leaf.detach().requires_grad_(requires_grad)
    x = leaf if not hasattr(inputs.x, "batch_sizes") else torch.nn.utils.rnn.PackedSequence(
        leaf, inputs.x.batch_sizes)
    states = [s.detach().requires_grad_(requires_grad) for s in inputs.states]
    return Inputs(x, leaf, states, inputs.grad_out, inputs.grad_states)


def call_once(run: Callable, inputs: Inputs, mode: str, params: Sequence[Tensor]):
    """One call in the mode: returns outputs (and, in training, gradients)."""
    if mode == "inference":
        with torch.no_grad():
            out, finals = run(inputs.x, inputs.states)
        return [out, *finals]
    for p in params:
        p.grad = None
    out, finals = run(inputs.x, inputs.states)
    torch.autograd.backward([out, *finals], [inputs.grad_out, *inputs.grad_states])
    return [out, *finals]


def repeatable_call(run: Callable, inputs: Inputs, mode: str, params: Sequence[Tensor]) -> Callable:
    if mode == "inference":
        def call() -> None:
            with torch.no_grad():
                run(inputs.x, inputs.states)
        return call
    fresh = _with_leaf(inputs, True)

    def call() -> None:
        for p in params:
            p.grad = None
        fresh.leaf.grad = None
        for s in fresh.states:
            s.grad = None
        out, finals = run(fresh.x, fresh.states)
        torch.autograd.backward([out, *finals], [inputs.grad_out, *inputs.grad_states])

    return call


def _collect(run: Callable, inputs: Inputs, mode: str, module: torch.nn.Module) -> list[Tensor]:
    """Outputs, final states and (training) gradients of input, states and parameters."""
    params = list(module.parameters())
    fresh = _with_leaf(inputs, mode == "training")
    outs = call_once(run, fresh, mode, params)
    outs = [o.detach() for o in outs]
    if mode == "training":
        grads = [fresh.leaf.grad, *[s.grad for s in fresh.states], *[p.grad for p in params]]
        outs += [torch.zeros(()) if g is None else g.detach() for g in grads]
    return outs


def check_against_reference(run: Callable, module: torch.nn.Module, case: Case, mode: str,
                            inputs: Inputs, oracle: tuple[list[Tensor], list[Tensor]]
                            ) -> tuple[bool, str]:
    """Compares an implementation with the float64 reference; returns (ok, detail)."""
    ref64, ref_dt = oracle
    got = _collect(run, inputs, mode, module)
    eps = torch.finfo(DTYPES[case.dtype]).eps
    worst = 0.0
    names = _result_names(case, mode, len(got))
    for name, g, r64, rdt in zip(names, got, ref64, ref_dt):
        if g.shape != r64.shape:
            return False, f"{name}: shape {tuple(g.shape)}, expected {tuple(r64.shape)}"
        g64 = g.double().cpu()
        if not torch.isfinite(g64).all():
            return False, f"{name}: not finite"
        err = (g64 - r64).abs().max().item() if g64.numel() else 0.0
        ref_err = (rdt.double().cpu() - r64).abs().max().item() if r64.numel() else 0.0
        scale = r64.abs().max().item() if r64.numel() else 0.0
        bound = 4 * ref_err + 50 * eps * (1 + scale)
        if err > bound:
            return False, f"{name}: max error {err:.3g} > bound {bound:.3g}"
        worst = max(worst, err / (1 + scale))
    return True, f"max rel. error {worst:.2g}"


def _result_names(case: Case, mode: str, count: int) -> list[str]:
    names = ["output", "h_n"] + (["c_n"] if case.cell == "lstm" else [])
    if mode == "training":
        names += ["grad input", "grad h0"] + (["grad c0"] if case.cell == "lstm" else [])
    names += [f"grad param {k}" for k in range(count - len(names))]
    return names


def oracle(module: torch.nn.Module, case: Case, mode: str, inputs: Inputs):
    """The reference's results in float64 and in the benchmark dtype."""
    out = []
    for dtype in (torch.float64, DTYPES[case.dtype]):
        m = copy.deepcopy(module).to(dtype)
        ins = Inputs(
            torch.nn.utils.rnn.PackedSequence(inputs.leaf.to(dtype), inputs.x.batch_sizes)
            if hasattr(inputs.x, "batch_sizes") else inputs.leaf.to(dtype),
            inputs.leaf.to(dtype), [s.to(dtype) for s in inputs.states],
            inputs.grad_out.to(dtype), [g.to(dtype) for g in inputs.grad_states])
        out.append([t.double().cpu() for t in _collect(reference_call(m, case), ins, mode, m)])
    return out[0], out[1]
