"""rnnkit.RNN / LSTM / GRU against torch.nn: outputs, final states and every gradient."""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch

import rnnkit

from ..helpers import compare, random_packed, twins

KINDS = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}),
         ("RNN", {"nonlinearity": "relu"}), ("LSTM", {"proj_size": 3})]
GRID = list(itertools.product(range(len(KINDS)), (1, 3), (False, True), (False, True),
                              (False, True), ("padded", "packed"), (False, True)))


def _id(p):
    k, layers, bi, bf, bias, layout, hx = p
    name, extra = KINDS[k]
    return (f"{name}{'-' + '-'.join(f'{a}={b}' for a, b in extra.items()) if extra else ''}"
            f"-L{layers}{'-bi' if bi else ''}{'-bf' if bf else ''}{'-nobias' if not bias else ''}"
            f"-{layout}{'-hx' if hx else ''}")


def _states(kind, extra, layers, bi, N, H, dtype, gen):
    D = 2 if bi else 1
    R = extra.get("proj_size", 0) or H
    h0 = torch.randn(layers * D, N, R, dtype=dtype, generator=gen).requires_grad_()
    if kind == "LSTM":
        return (h0, torch.randn(layers * D, N, H, dtype=dtype, generator=gen).requires_grad_())
    return h0


@pytest.mark.parametrize("params", GRID, ids=[_id(p) for p in GRID])
def test_layer_matches_torch_float64(params):
    k, layers, bi, bf, bias, layout, hx = params
    kind, extra = KINDS[k]
    I, H, T, N = 4, 5, 6, 3
    gen = torch.Generator().manual_seed(zlib.crc32(_id(params).encode()))
    theirs, ours = twins(kind, I, H, num_layers=layers, bidirectional=bi, batch_first=bf,
                         bias=bias, dtype=torch.float64, **extra)
    if layout == "packed":
        x, _ = random_packed(T, N, I, torch.float64, enforce_sorted=False, gen=gen)
    else:
        shape = (N, T, I) if bf else (T, N, I)
        x = torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_()
    inputs = [x]
    if hx:
        inputs.append(_states(kind, extra, layers, bi, N, H, torch.float64, gen))
    compare(theirs, ours, inputs, torch.float64)


@pytest.mark.parametrize("kind,extra", KINDS, ids=[f"{k}{e}" for k, e in KINDS])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_layer_matches_torch_float32(kind, extra, layout):
    I, H, T, N = 16, 33, 20, 5
    gen = torch.Generator().manual_seed(7)
    theirs, ours = twins(kind, I, H, num_layers=2, bidirectional=True, dtype=torch.float32, **extra)
    if layout == "packed":
        x, _ = random_packed(T, N, I, torch.float32, enforce_sorted=True, gen=gen)
    else:
        x = torch.randn(T, N, I, generator=gen).requires_grad_()
    compare(theirs, ours, [x], torch.float32)


@pytest.mark.parametrize("kind,extra", KINDS, ids=[f"{k}{e}" for k, e in KINDS])
@pytest.mark.parametrize("T,N,H", [(1, 1, 1), (1, 4, 3), (9, 1, 17), (3, 2, 129)])
def test_awkward_sizes(kind, extra, T, N, H):
    if extra.get("proj_size", 0) >= H:
        pytest.skip("proj_size must be smaller than hidden_size")
    theirs, ours = twins(kind, 3, H, dtype=torch.float64, **extra)
    x = torch.randn(T, N, 3, dtype=torch.float64, requires_grad=True)
    compare(theirs, ours, [x], torch.float64)


@pytest.mark.parametrize("kind,extra", KINDS, ids=[f"{k}{e}" for k, e in KINDS])
def test_unbatched_input(kind, extra):
    theirs, ours = twins(kind, 3, 6, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    compare(theirs, ours, [x], torch.float64)
    D, R = 2, extra.get("proj_size", 0) or 6
    h0 = torch.randn(2 * D, R, dtype=torch.float64, requires_grad=True)
    hx = (h0, torch.randn(2 * D, 6, dtype=torch.float64, requires_grad=True)) if kind == "LSTM" else h0
    compare(theirs, ours, [x, hx], torch.float64)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_long_sequence(kind):
    """T = 2,000 steps: the states stay finite and equal torch.nn's."""
    theirs, ours = twins(kind, 8, 16, dtype=torch.float64)
    x = torch.randn(2000, 2, 8, dtype=torch.float64, requires_grad=True)
    compare(theirs, ours, [x], torch.float64)


def test_very_different_lengths():
    """One sequence of 200 steps beside sequences of 1 and 2 steps, packed."""
    from torch.nn.utils.rnn import pack_sequence

    theirs, ours = twins("LSTM", 3, 8, num_layers=2, bidirectional=True, dtype=torch.float64)
    seqs = [torch.randn(n, 3, dtype=torch.float64, requires_grad=True) for n in (2, 200, 1)]
    compare(theirs, ours, [pack_sequence(seqs, enforce_sorted=False)], torch.float64)


def test_dropout_acts_between_layers_in_training_only():
    ours = rnnkit.LSTM(4, 6, num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 4)
    ours.eval()
    a, b = ours(x)[0], ours(x)[0]
    assert torch.equal(a, b), "eval mode must be deterministic"
    ours.train()
    torch.manual_seed(0)
    c = ours(x)[0]
    torch.manual_seed(1)
    d = ours(x)[0]
    assert not torch.equal(c, d), "training mode must drop (different masks give different outputs)"
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        one_layer = rnnkit.LSTM(4, 6, num_layers=1, dropout=0.5).train()  # torch.nn warns too
    assert torch.equal(one_layer(x)[0], one_layer(x)[0]), "no dropout after the last layer"


def test_dropout_matches_torch_with_the_same_random_stream():
    theirs, ours = twins("GRU", 4, 6, num_layers=3, dropout=0.3, dtype=torch.float64)
    theirs.train(), ours.train()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.manual_seed(3)
    a = theirs(x)[0]
    torch.manual_seed(3)
    b = ours(x)[0]
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
