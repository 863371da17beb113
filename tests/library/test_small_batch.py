"""The small-batch recurrent path (N <= 16): every step of a chunk runs in one parallel region,
each thread on its own hidden units, with the state double-buffered between steps. The final
state of a packed sequence is in the buffer of its last step's parity, so lengths of both
parities, both directions, several thread counts and the limit N = 16 (against N = 17, the BLAS
path) are checked against torch.nn in float64. Backward through time has the same path (each
thread's pointwise pass on its units, then its columns of da W_hh): gradients likewise, and in
bfloat16 and float16 against torch.nn's error in that dtype."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

from ..helpers import compare, tensors_of, twins


def _lengths(T: int, N: int) -> torch.Tensor:
    """Lengths of both parities, the longest first, down to a single step."""
    return (
        torch.tensor([T] + [1 + (T - 1 - k) % T for k in range(N - 1)]).sort(descending=True).values
    )


@pytest.mark.parametrize("intra_op_threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("N", [1, 5, 16, 17])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_small_batch_path_matches_torch(intra_op_threads, kind, N, grad):
    theirs, ours = twins(kind, 3, 19, bidirectional=True, seed=N)
    gen = torch.Generator().manual_seed(100 * N + intra_op_threads)
    T = 12
    x = torch.randn(T, N, 3, dtype=torch.float64, generator=gen)
    for inp in (x, pack_padded_sequence(x, _lengths(T, N), enforce_sorted=True)):
        with torch.set_grad_enabled(grad):
            got, want = ours(inp), theirs(inp)
        for a, b in zip(tensors_of(got), tensors_of(want)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("intra_op_threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("N", [1, 5, 16, 17])
@pytest.mark.parametrize("T", [3, 12], ids=["T3", "T12"])  # T = 3: float64 multiplies unpacked
def test_small_batch_backward_matches_torch(intra_op_threads, kind, N, T):
    # H = 19: two whole blocks of 8 float64 units and a block of 3
    theirs, ours = twins(kind, 3, 19, bidirectional=True, num_layers=2, seed=N + T)
    gen = torch.Generator().manual_seed(7 * N + T)
    x = torch.randn(T, N, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    h0 = torch.randn(4, N, 19, dtype=torch.float64, generator=gen, requires_grad=True)
    states = (h0, torch.randn_like(h0).requires_grad_()) if kind == "LSTM" else h0
    compare(theirs, ours, [x, states], torch.float64)
    packed = pack_padded_sequence(x, _lengths(T, N), enforce_sorted=True)
    compare(theirs, ours, [packed], torch.float64)


def _gradients(module, x, seed):
    out, _ = module(x)
    return torch.autograd.grad(out, [x] + list(module.parameters()), seed.to(out.dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("N", [1, 5])
def test_small_batch_backward_low_precision(dtype, kind, N):
    """Every gradient within twice torch.nn's error in the same dtype (against float64), plus a
    floor; H = 33 leaves a block of one unit, and the RNN's 33 gate rows an odd pair."""
    theirs, _ = twins(kind, 24, 33, seed=N)
    ours = rnnkit.from_torch(theirs).to(dtype)
    gen = torch.Generator().manual_seed(N)
    x = torch.randn(40, N, 24, dtype=torch.float64, generator=gen)
    seed = torch.randn(40, N, 33, dtype=torch.float64, generator=gen)
    want = _gradients(theirs, x.requires_grad_(), seed)
    got = _gradients(ours, x.detach().to(dtype).requires_grad_(), seed)
    theirs_low = _gradients(
        copy.deepcopy(theirs).to(dtype), x.detach().to(dtype).requires_grad_(), seed
    )
    names = ["input"] + [n for n, _ in theirs.named_parameters()]
    for name, g, w, t in zip(names, got, want, theirs_low):
        ours_err = (g.double() - w).abs().max().item()
        their_err = (t.double() - w).abs().max().item()
        assert ours_err <= 2 * their_err + 1e-3 * w.abs().max().item(), (
            f"{kind} {dtype} N={N}: gradient of {name} off by {ours_err:.3g}, torch.nn's by "
            f"{their_err:.3g}"
        )
