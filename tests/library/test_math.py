"""The elementary functions of the CPU kernels (csrc/common/math.h), through operators that apply
one of them alone: rnn_cell with W_ih = identity and every other weight and bias zero computes
h = tanh(x) exactly as the kernels' pointwise pass does, and gru_cell with x passed to the update
gate alone computes sigmoid(x) = 1 / (1 + exp(-x)), which takes the kernels' exp."""

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


def _sigmoid_by_the_kernel(x):
    """sigmoid of every value of x ([rows, H]) by the GRU cell's pointwise pass: W_ih passes x to
    the update gate z alone and h_prev is 1, so h' = (1 - z) tanh(0 + r * 0) + z * 1 = z."""
    zero = torch.zeros(H, H, dtype=x.dtype)
    w_ih = torch.cat([zero, torch.eye(H, dtype=x.dtype), zero])
    return ops.gru_cell(x, torch.ones_like(x), w_ih, torch.zeros(3 * H, H, dtype=x.dtype), None,
                        None)[0]


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


def test_float32_sigmoid_is_within_two_and_a_half_ulps_everywhere():
    # exp's argument -x over its whole range with a normal result (sigmoid(-87) is 1.6e-38), each
    # interval of exp's reduction to [-ln 2 / 2, ln 2 / 2] crossed many times; densely near 0,
    # where sigmoid is about 1/2 + x/4. Beyond exp's error (0.93 ULP at most), 1 + exp(-x) and the
    # division round once each: the worst case is 2.24 ULP (x = -16.65), as it was with Sleef's exp.
    x = torch.cat([torch.linspace(-1e-3, 1e-3, 4096), torch.linspace(-87, 89, H * 2048 - 4096)])
    x = x.view(-1, H)
    got = _sigmoid_by_the_kernel(x)
    errors = _ulps(got, torch.sigmoid(x.double()))
    worst = int(errors.argmax())
    assert errors.max() <= 2.5, f"sigmoid({x.flatten()[worst].item()!r}) is {errors.max():.2f} ULP off"


def test_float32_sigmoid_special_values():
    # exp(-x) overflows to inf for x below -88.72, so sigmoid is 0 there, not the subnormal it
    # would round to (an absolute error under FLT_MIN, 1.2e-38); far out, 0 and 1 exactly, and
    # NaN stays NaN. (No infinities: their products with the r and n gates' zero weights are NaN.)
    special = torch.tensor([0.0, 1e-30, -1e-30, 20.0, -20.0, 88.7, 89.0, 100.0, -87.0, -88.7,
                            -95.0, -103.9, -110.0, 3.4e38, -3.4e38, math.nan])
    x = torch.zeros(len(special), H)
    x[range(len(special)), range(len(special))] = special
    got = _sigmoid_by_the_kernel(x)[range(len(special)), range(len(special))]
    exact = torch.sigmoid(special.double()).float()
    torch.testing.assert_close(got, exact, rtol=2.5e-7, atol=1.2e-38, equal_nan=True)
    assert got[special == 3.4e38].item() == 1.0 and got[special == -3.4e38].item() == 0.0
