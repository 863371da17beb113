"""The test-only cell rnnkit_testing::mgu (csrc/common/cells/testing_mgu.h), a minimal gated unit
that exists to show that a cell is its description and nothing else: it runs through the same
time loop, prologue and registration as rnnkit's own cells. Checked against plain PyTorch written
from its equations, in float64, padded and packed, both directions, both CPU paths (small batch
fused, BLAS), inference chunks, and with gradcheck."""

from __future__ import annotations

import pytest
import torch

from rnnkit import _C

from ..conftest import ALL_DEVICES

testing = torch.ops.rnnkit_testing


def mgu_step(x: torch.Tensor, h: torch.Tensor, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    """One step, x: (N, I), h: (N, H) -> (N, H):
    f = σ(x_f + h_f), n = tanh(x_n + f ⊙ h_n), h' = (1 - f) ⊙ h + f ⊙ n,
    with x_ = W_i x + b_i and h_ = W_h h + b_h (gates f, n in that order)."""
    gx = x @ w_ih.T + (0 if b_ih is None else b_ih)
    gh = h @ w_hh.T + (0 if b_hh is None else b_hh)
    x_f, x_n = gx.chunk(2, dim=-1)
    h_f, h_n = gh.chunk(2, dim=-1)
    f = torch.sigmoid(x_f + h_f)
    n = torch.tanh(x_n + f * h_n)
    return (1 - f) * h + f * n


def mgu_reference(x, h0, w_ih, w_hh, b_ih, b_hh, reverse=False):
    """x: (T, N, I), h0: (N, H) -> output (T, N, H), h_n (N, H)."""
    outputs = [None] * x.shape[0]
    h = h0
    for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
        h = mgu_step(x[t], h, w_ih, w_hh, b_ih, b_hh)
        outputs[t] = h
    return torch.stack(outputs), h


def _setup(ctx, inputs, output):
    # The zoneout arguments follow (csrc/common/operators.h); these tests leave them off.
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse, train = inputs[:9]
    ctx.extra = len(inputs) - 9
    ctx.mark_non_differentiable(output[2])
    ctx.reverse = reverse
    ctx.biases = (b_ih is not None, b_hh is not None)
    ctx.save_for_backward(input, batch_sizes, h0, w_ih, w_hh, output[0], output[2])


def _backward(ctx, grad_output, grad_h_n, _grad_workspace):
    input, batch_sizes, h0, w_ih, w_hh, output, workspace = ctx.saved_tensors
    g_in, g_h0, g_w_ih, g_w_hh, g_b_ih, g_b_hh = testing.mgu_backward(
        grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output, workspace, ctx.reverse)
    return (g_in, None, g_h0, g_w_ih, g_w_hh, g_b_ih if ctx.biases[0] else None,
            g_b_hh if ctx.biases[1] else None, None, None) + (None,) * ctx.extra


torch.library.register_autograd("rnnkit_testing::mgu", _backward, setup_context=_setup)


def _weights(I, H, device, dtype=torch.float64, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: (torch.rand(*shape, generator=gen, dtype=dtype) - 0.5).to(device)
    return (make(2 * H, I), make(2 * H, H), make(2 * H) if bias else None,
            make(2 * H) if bias else None)


def test_workspace_width_is_the_description():
    assert _C.workspace_width("mgu", 7, False) == 3 * 7  # [f, n | h_n]
    assert _C.workspace_width("gru", 7, False) == 4 * 7
    assert _C.workspace_width("lstm", 7, True) == 6 * 7
    with pytest.raises(ValueError, match="expected a cell of rnnkit"):
        _C.workspace_width("nope", 7, False)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("T,N,I,H", [(1, 1, 2, 1), (5, 3, 4, 3), (4, 20, 5, 17), (3, 2, 3, 33)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_matches_reference(device, T, N, I, H, reverse, bias):
    w_ih, w_hh, b_ih, b_hh = _weights(I, H, device, bias=bias)
    x = torch.randn(T, N, I, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(N, H, dtype=torch.float64, device=device, requires_grad=True)
    params = [w for w in (w_ih, w_hh, b_ih, b_hh) if w is not None]
    for p in params:
        p.requires_grad_(True)
    out, h_n, ws = testing.mgu(x, None, h0, w_ih, w_hh, b_ih, b_hh, reverse)
    ref_out, ref_h = mgu_reference(x, h0, w_ih, w_hh, b_ih, b_hh, reverse)
    assert ws.shape == (T * N, _C.workspace_width("mgu", H, False))
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h, rtol=1e-12, atol=1e-12)
    seeds = torch.randn_like(out), torch.randn_like(h_n)
    leaves = [x, h0, *params]
    ours = torch.autograd.grad((out, h_n), leaves, seeds)
    theirs = torch.autograd.grad((ref_out, ref_h), leaves, seeds)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad {k}: {m}")


@pytest.mark.parametrize("reverse", [False, True])
def test_packed_matches_reference(reverse):
    lengths = [6, 4, 4, 1]
    I, H = 3, 5
    w_ih, w_hh, b_ih, b_hh = _weights(I, H, "cpu")
    padded = torch.randn(max(lengths), len(lengths), I, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(padded, torch.tensor(lengths))
    h0 = torch.randn(len(lengths), H, dtype=torch.float64)
    out, h_n, _ = testing.mgu(packed.data, packed.batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse)
    for i, L in enumerate(lengths):
        ref_out, ref_h = mgu_reference(padded[:L, i : i + 1], h0[i : i + 1], w_ih, w_hh, b_ih,
                                       b_hh, reverse)
        rows = [int(packed.batch_sizes[:t].sum()) + i for t in range(L)]
        torch.testing.assert_close(out[rows], ref_out[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h_n[i], ref_h[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_chunks_and_float32(dtype):
    """train=False projects the input in chunks of steps (T * N rows span several here) and keeps
    no workspace; float32 takes the SIMD lanes of every unit (H a multiple of 16)."""
    T, N, I, H = 70, 20, 4, 32
    w_ih, w_hh, b_ih, b_hh = (w.to(dtype) for w in _weights(I, H, "cpu"))
    x = torch.randn(T, N, I, dtype=dtype)
    h0 = torch.randn(N, H, dtype=dtype)
    out, h_n, ws = testing.mgu(x, None, h0, w_ih, w_hh, b_ih, b_hh, False, train=False)
    assert ws.shape == (0,)
    ref_out, ref_h = mgu_reference(x.double(), h0.double(), *(w.double() for w in
                                                               (w_ih, w_hh, b_ih, b_hh)))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(h_n.double(), ref_h, rtol=tol, atol=tol)


def test_cell_operator_matches_reference():
    w_ih, w_hh, b_ih, b_hh = _weights(3, 4, "cpu")
    x, hx = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    hy, ws = testing.mgu_cell(x, hx, w_ih, w_hh, b_ih, b_hh)
    torch.testing.assert_close(hy, mgu_step(x, hx, w_ih, w_hh, b_ih, b_hh), rtol=1e-12,
                               atol=1e-12)
    assert ws.shape == (2, _C.workspace_width("mgu", 4, False))


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(device, reverse):
    w_ih, w_hh, b_ih, b_hh = _weights(3, 2, device)
    x = torch.randn(4, 3, 3, dtype=torch.float64, device=device)
    h0 = torch.randn(3, 2, dtype=torch.float64, device=device)
    args = [t.requires_grad_(True) for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]

    def run(x, h0, w_ih, w_hh, b_ih, b_hh):
        out, h_n, _ = testing.mgu(x, None, h0, w_ih, w_hh, b_ih, b_hh, reverse)
        return out, h_n

    assert torch.autograd.gradcheck(run, args)


def test_errors_name_the_testing_operator():
    w_ih, w_hh, b_ih, b_hh = _weights(3, 4, "cpu")
    with pytest.raises(RuntimeError, match=r"rnnkit_testing::mgu: expected w_ih with a multiple of 2"):
        testing.mgu(torch.randn(2, 1, 3, dtype=torch.float64), None,
                    torch.zeros(1, 4, dtype=torch.float64), w_ih[:7], w_hh, None, None, False)
