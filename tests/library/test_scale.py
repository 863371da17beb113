"""Long sequences and large strides.

T = 100,000 steps: the result equals torch.nn's, the gradient equals a finite difference, and the
call runs on a thread with a small stack (the time loop must not recurse). Per-step time is
measured by tools/scale_check.py, not here (no speed asserts in tests).

Strides past 2^31 elements: input and state views whose strides do not fit a 32-bit int, over a
sparse anonymous mapping so that nothing near 2^31 elements is really allocated.
"""

from __future__ import annotations

import mmap
import threading

import pytest
import torch

import rnnkit

from ..helpers import twins

T_LONG = 100_000
KINDS = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"})]


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _on_small_stack(fn, stack_bytes: int = 2 * 2**20):
    """Runs fn() on a new thread with a stack of stack_bytes; returns its result. A loop that
    recursed once per step would need at least ~50 bytes per step, 5 MB for 100,000 steps."""
    result, error = [], []
    old = threading.stack_size(stack_bytes)
    try:
        t = threading.Thread(target=lambda: _capture(fn, result, error))
        t.start()
    finally:
        threading.stack_size(old)
    t.join()
    if error:
        raise error[0]
    return result[0]


def _capture(fn, result, error):
    try:
        result.append(fn())
    except BaseException as e:  # noqa: BLE001  (re-raised on the caller's thread)
        error.append(e)


@pytest.mark.parametrize("kind,extra", KINDS, ids=[k for k, _ in KINDS])
def test_100k_steps_forward_matches_torch(kind, extra):
    theirs, ours = twins(kind, 3, 4, dtype=torch.float64, **extra)
    x = torch.randn(T_LONG, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = theirs(x)
        got = _on_small_stack(lambda: ours(x))
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,extra", KINDS, ids=[k for k, _ in KINDS])
def test_100k_steps_gradient_matches_finite_difference(kind, extra):
    """<dL/dθ, v> from backward against (L(θ + εv) - L(θ - εv)) / 2ε for random directions v of
    the input and of weight_hh_l0, L = <outputs, fixed random weights>."""
    torch.manual_seed(0)
    module = getattr(rnnkit, kind)(3, 4, dtype=torch.float64, **extra)
    x = torch.randn(T_LONG, 2, 3, dtype=torch.float64, requires_grad=True)
    w = module.weight_hh_l0
    out_seed = torch.randn(T_LONG, 2, 4, dtype=torch.float64)

    def loss(inp):
        return (module(inp)[0] * out_seed).sum()

    g_x, g_w = _on_small_stack(lambda: torch.autograd.grad(loss(x), [x, w]))
    assert torch.isfinite(g_x).all() and torch.isfinite(g_w).all()
    eps = 1e-6
    v_x, v_w = torch.randn_like(x), torch.randn_like(w)
    with torch.no_grad():
        fd_x = (loss(x + eps * v_x) - loss(x - eps * v_x)) / (2 * eps)
        w0 = w.clone()
        w.copy_(w0 + eps * v_w)
        plus = loss(x)
        w.copy_(w0 - eps * v_w)
        minus = loss(x)
        w.copy_(w0)
        fd_w = (plus - minus) / (2 * eps)
    torch.testing.assert_close((g_x * v_x).sum(), fd_x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close((g_w * v_w).sum(), fd_w, rtol=1e-6, atol=1e-6)


# ---- strides past 2^31 elements -----------------------------------------------------------------
BIG = 2**31 + 11  # elements: a stride that does not fit a 32-bit int


def _sparse_floats(count: int) -> torch.Tensor:
    """A float32 tensor of `count` elements over an anonymous private mapping: pages are only
    backed by memory where written (MAP_NORESERVE: no commit charge either)."""
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20) | getattr(mmap, "MAP_NORESERVE", 0x4000)
    try:
        buf = mmap.mmap(-1, count * 4, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, OverflowError, ValueError) as error:
        pytest.skip(f"cannot map {count * 4 / 2**30:.1f} GiB of address space here: {error}")
    t = torch.frombuffer(buf, dtype=torch.float32, count=count)
    t._keep_mapping = buf  # the tensor must not outlive the mapping
    return t


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_views_with_strides_past_2_31(kind):
    """Input (T, N, I) whose time stride is 2^31 + 11 elements, batch_first input whose batch
    stride is, and initial states whose layer stride is: results equal those on contiguous
    copies, gradients too."""
    T, N, I, H = 3, 2, 5, 4
    theirs, ours = twins(kind, I, H, num_layers=2, dtype=torch.float32)
    base = _sparse_floats(2 * BIG + 64)
    gen = torch.Generator().manual_seed(0)

    x = base.as_strided((T, N, I), (BIG, I, 1))
    x.copy_(torch.randn(T, N, I, generator=gen))
    h = base.as_strided((2, N, H), (BIG, H, 1), storage_offset=32)
    h.copy_(torch.randn(2, N, H, generator=gen))
    assert max(x.stride()) > 2**31 and max(h.stride()) > 2**31
    hx = (h, torch.zeros(2, N, H)) if kind == "LSTM" else h
    hx_copy = (h.clone(), torch.zeros(2, N, H)) if kind == "LSTM" else h.clone()

    x_big = x.detach().requires_grad_()
    x_small = x.clone().requires_grad_()
    out_big, out_small = ours(x_big, hx), ours(x_small, hx_copy)
    for a, b in zip(torch.utils._pytree.tree_leaves(out_big), torch.utils._pytree.tree_leaves(out_small)):
        assert torch.equal(a, b)
    torch.testing.assert_close(out_small[0], theirs(x.clone(), hx_copy)[0], rtol=1e-5, atol=1e-5)
    g_big, = torch.autograd.grad(out_big[0].sum(), x_big)
    g_small, = torch.autograd.grad(out_small[0].sum(), x_small)
    assert torch.equal(g_big, g_small)

    # batch_first: (N, T, I) with the batch stride past 2^31, transposed inside the module.
    bf = rnnkit.from_torch(theirs)
    bf.batch_first = True
    xb = base.as_strided((N, T, I), (BIG, I, 1), storage_offset=64)
    xb.copy_(torch.randn(N, T, I, generator=gen))
    torch.testing.assert_close(bf(xb)[0], bf(xb.clone())[0], rtol=0, atol=0)
