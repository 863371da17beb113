"""The elementary functions of the CPU kernels (csrc/common/math.h), through an operator that
applies one of them alone: rnn_cell with W_ih = identity and every other weight and bias zero
computes h = tanh(x) exactly as the kernels' pointwise pass does."""

import math

import pytest
import torch

ops = torch.ops.rnnkit

H = 64  # a multiple of every SIMD width, so that every lane takes the vector code


def _tanh_by_the_kernel(x):
    """tanh of every value of x (float32 or float64, [rows, H]) by the RNN cell's pointwise pass."""
    zero = torch.zeros(H, H, dtype=x.dtype)
    return ops.rnn_cell(x, torch.zeros_like(x), torch.eye(H, dtype=x.dtype), zero, None, None,
                        "tanh")


def _ulps(got, exact):
    """|got - exact| in units of the last place of float32 at exact."""
    ref = exact.float().abs()
    ulp = torch.nextafter(ref, torch.full_like(ref, math.inf)) - ref
    return ((got.double() - exact).abs() / ulp.double())


def test_float32_tanh_is_within_two_ulps_everywhere():
    # every float32 step near 0 and the switch between the two formulas (|x| = 0.55), then a
    # dense sweep out to where tanh is 1
    near = torch.cat([torch.linspace(-1e-3, 1e-3, 4096), torch.linspace(0.54, 0.56, 4096),
                      torch.linspace(-0.56, -0.54, 4096)])
    x = torch.cat([near, torch.linspace(-12, 12, H * 1024 - near.numel())]).view(-1, H)
    got = _tanh_by_the_kernel(x)
    errors = _ulps(got, torch.tanh(x.double()))
    worst = int(errors.argmax())
    assert errors.max() <= 2, f"tanh({x.flatten()[worst].item()!r}) is {errors.max():.2f} ULP off"


def test_float32_tanh_special_values():
    # one value per row, on the diagonal, so that an infinity times the identity's zeros (NaN)
    # lands only in lanes that are not read
    special = torch.tensor([0.0, 1e-30, -1e-30, 1e-8, -1e-8, 9.0, -9.0, 50.0, -100.0, math.inf,
                            -math.inf, 3.4e38, -3.4e38, math.nan])
    x = torch.zeros(len(special), H)
    x[range(len(special)), range(len(special))] = special
    got = _tanh_by_the_kernel(x)[range(len(special)), range(len(special))]
    torch.testing.assert_close(got, torch.tanh(special), rtol=2e-7, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_is_odd(dtype):
    x = torch.rand(8, H, dtype=dtype) * 20
    torch.testing.assert_close(_tanh_by_the_kernel(-x), -_tanh_by_the_kernel(x), rtol=0, atol=0)
