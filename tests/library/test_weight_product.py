"""One product of the CPU kernels' bfloat16 path (csrc/cpu/weights.h: WeightB), through the
test-only operator rnnkit_testing::weight_product, against float64 at awkward sizes: the edges of
the AMX tile product's 32 x 32 blocks and 32-value k tiles (csrc/cpu/amx.h), both weight layouts,
beta 0 and 1, bfloat16 and float32 left operands. Runs on whichever path this process chose
(rnnkit.build_info()["cpu_bf16_path"]); test_bf16.py's test_every_product_path runs the layers on
each path."""
from __future__ import annotations

import itertools

import pytest
import torch

import rnnkit

product = torch.ops.rnnkit_testing.weight_product
PATH = rnnkit.build_info()["cpu_bf16_path"].split()[0]

SIZES = list(itertools.product([1, 15, 16, 31, 33, 64, 257], [1, 31, 32, 33, 96], [1, 17, 31, 33, 64]))


def _tolerance(a, op_b, pack, M):
    """float32 accumulation: a few units of float32's rounding of the sum of |a||b|. The oneDNN
    path (and the Amx path for a weight it does not pack: few rows, multiplied once) rounds each
    result to bfloat16 instead."""
    scale = a.abs() @ op_b.abs()
    rounded = PATH == "onednn" or (PATH == "amx" and not pack and M < 256)
    return (2.0 ** -8 if rounded else 2.0 ** -20) * scale + 1e-30


@pytest.mark.parametrize("trans_b,pack", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("a_dtype", [torch.bfloat16, torch.float32])
def test_product_against_float64(trans_b, pack, a_dtype):
    gen = torch.Generator().manual_seed(11)
    for M, K, N in SIZES:
        for beta in (0.0, 1.0):
            a = torch.randn(M, K, generator=gen).to(a_dtype)
            b = torch.randn(*((N, K) if trans_b else (K, N)), generator=gen).bfloat16()
            c = torch.randn(M, N, generator=gen)
            got = product(a, b, trans_b, c, beta, pack).double()
            # a float32 left operand is rounded to bfloat16 for the product, except on the f32
            # path, which multiplies in float32
            a64 = (a if PATH == "f32" else a.bfloat16()).double()
            op_b = b.double().t() if trans_b else b.double()
            want = a64 @ op_b + beta * c.double()
            err = (got - want).abs()
            tol = _tolerance(a64, op_b, pack, M) + 2.0 ** -23 * beta * c.double().abs()
            assert bool((err <= tol).all()), (
                f"M={M} K={K} N={N} trans_b={trans_b} pack={pack} beta={beta} {a_dtype}: "
                f"largest error {err.max().item():.3g} on path {PATH}")


def test_large_product_splits_over_threads():
    """A product with many rows and columns (the input projection's shape at T=40, N=16), so that
    every thread takes a range of column blocks, with NaN-free results everywhere."""
    gen = torch.Generator().manual_seed(12)
    a = torch.randn(640, 256, generator=gen).bfloat16()
    b = torch.randn(1024, 256, generator=gen).bfloat16()
    got = product(a, b, True, torch.zeros(640, 1024), 0.0, False).double()
    want = a.double() @ b.double().t()
    assert torch.isfinite(got).all()
    assert bool(((got - want).abs() <= _tolerance(a.double(), b.double().t(), False, 640)).all())


def test_bad_operands_are_named():
    with pytest.raises(RuntimeError, match="a has 3 columns but op\\(b\\) has 4 rows"):
        product(torch.ones(2, 3).bfloat16(), torch.ones(5, 4).bfloat16(), True,
                torch.zeros(2, 5), 0.0, True)
    with pytest.raises(RuntimeError, match="expected b contiguous 2-d bfloat16 or float16"):
        product(torch.ones(2, 3), torch.ones(5, 3), True, torch.zeros(2, 5), 0.0, True)
