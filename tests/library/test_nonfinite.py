"""NaN and ±Inf in inputs, initial states or weights propagate as torch.nn propagates them.

For every layer kind and every place a non-finite value can enter, rnnkit's outputs, final states
and gradients must have NaN exactly where torch.nn's have NaN, the same infinities, and the same
finite values elsewhere; no exception, no hang.
"""

from __future__ import annotations

import math

import pytest
import torch

from ..helpers import twins

KINDS = [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}),
         ("RNN", {"nonlinearity": "relu"})]
CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
         ("RNNCell", {"nonlinearity": "relu"})]
VALUES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
SITES = ["input", "h0", "c0", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "weight_hr_l0",
         "weight_ih_l1_reverse"]


def _same_nonfinite(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """NaN where b has NaN, the same infinities, the same finite values (float64, 1e-10)."""
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), (
        f"{what}: NaN at {int(nan_a.sum())} places in rnnkit, {int(nan_b.sum())} in torch.nn; "
        f"they differ at {int((nan_a != nan_b).sum())}")
    inf_a, inf_b = torch.isinf(a), torch.isinf(b)
    assert torch.equal(inf_a, inf_b), f"{what}: the infinities are at different places"
    assert torch.equal(a[inf_a], b[inf_b]), f"{what}: infinities of different signs"
    finite = torch.isfinite(b)
    torch.testing.assert_close(a[finite], b[finite], rtol=1e-10, atol=1e-10,
                               msg=lambda m: f"{what} (finite part): {m}")


def _poison(cfg_kind: str, site: str, value: float, module_t, module_o, x, states):
    """Puts value at one place of the same site in both modules (or the shared tensors)."""
    gen = torch.Generator().manual_seed(hash((cfg_kind, site)) % 2**31)
    if site == "input":
        target = x
    elif site in ("h0", "c0"):
        k = 0 if site == "h0" else 1
        if k >= len(states):
            return False
        target = states[k]
    else:
        if not hasattr(module_t, site) or getattr(module_t, site) is None:
            return False
        with torch.no_grad():
            p_t, p_o = getattr(module_t, site), getattr(module_o, site)
            idx = tuple(int(torch.randint(0, s, (1,), generator=gen)) for s in p_t.shape)
            p_t[idx] = value
            p_o[idx] = value
        return True
    with torch.no_grad():
        idx = tuple(int(torch.randint(0, s, (1,), generator=gen)) for s in target.shape)
        target[idx] = value
    return True


def _run(module, x, states, kind):
    x = x.detach().requires_grad_()
    states = [s.detach().requires_grad_() for s in states]
    hx = tuple(states) if kind.startswith("LSTM") else states[0]
    out = module(x, hx)
    outs = [out] if isinstance(out, torch.Tensor) else [
        t for o in out for t in (o if isinstance(o, tuple) else (o,))]
    gen = torch.Generator().manual_seed(1)
    seeds = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, [x, *states, *module.parameters()], seeds)
    names = [f"output {k}" for k in range(len(outs))] + ["grad input"]
    names += [f"grad state {k}" for k in range(len(states))]
    names += [f"grad {n}" for n, _ in module.named_parameters()]
    return list(zip(names, outs + list(grads)))


@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("kind,extra", KINDS, ids=[f"{k}{e}" for k, e in KINDS])
def test_layers_propagate_like_torch(kind, extra, site, value):
    theirs, ours = twins(kind, 3, 5, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    gen = torch.Generator().manual_seed(0)
    T, N = 6, 3
    x = torch.randn(T, N, 3, dtype=torch.float64, generator=gen)
    R = extra.get("proj_size", 0) or 5
    states = [torch.randn(4, N, R, dtype=torch.float64, generator=gen)]
    if kind == "LSTM":
        states.append(torch.randn(4, N, 5, dtype=torch.float64, generator=gen))
    if not _poison(kind, site, VALUES[value], theirs, ours, x, states):
        pytest.skip(f"{kind}{extra} has no {site}")
    for (name, a), (_, b) in zip(_run(ours, x, states, kind), _run(theirs, x, states, kind)):
        _same_nonfinite(a, b, f"{kind}{extra}, {value} in {site}: {name}")


@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("site", ["input", "h0", "c0", "weight_ih", "weight_hh", "bias_hh"])
@pytest.mark.parametrize("kind,extra", CELLS, ids=[f"{k}{e}" for k, e in CELLS])
def test_cells_propagate_like_torch(kind, extra, site, value):
    theirs, ours = twins(kind, 3, 5, dtype=torch.float64, **extra)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    states = [torch.randn(4, 5, dtype=torch.float64, generator=gen)
              for _ in range(2 if kind == "LSTMCell" else 1)]
    if not _poison(kind, site, VALUES[value], theirs, ours, x, states):
        pytest.skip(f"{kind} has no {site}")
    for (name, a), (_, b) in zip(_run(ours, x, states, kind), _run(theirs, x, states, kind)):
        _same_nonfinite(a, b, f"{kind}{extra}, {value} in {site}: {name}")
