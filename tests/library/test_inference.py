"""The inference path of the LSTM and GRU layer operators (train=False): no workspace is kept,
the input projection runs in chunks of steps, and the results equal the training path's."""

import pytest
import torch

import rnnkit.functional as F
from rnnkit import reference as R

from ..conftest import ALL_DEVICES
from ..helpers import twins

ops = torch.ops.rnnkit


def _layer_args(cell, T, N, I, H, packed, reverse, proj, dtype, device, gen):
    """Random arguments of rnnkit::lstm or rnnkit::gru (without train), none requiring grad."""

    def rand(*shape):
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).to(device, dtype)

    if packed:
        lengths = torch.randint(1, T + 1, (N,), generator=gen)
        lengths[0] = T
        lengths = lengths.sort(descending=True).values
        bs = torch.tensor([int((lengths > t).sum()) for t in range(T)])
        x = rand(int(bs.sum()), I)
    else:
        bs, x = None, rand(T, N, I)
    if cell == "lstm":
        R_ = 3 if proj else H
        w_hr = rand(R_, H) if proj else None
        return (x, bs, rand(N, R_), rand(N, H), rand(4 * H, I), rand(4 * H, R_), rand(4 * H),
                rand(4 * H), w_hr, reverse)
    return (x, bs, rand(N, H), rand(3 * H, I), rand(3 * H, H), rand(3 * H), rand(3 * H), reverse)


def _reference(cell, args):
    if cell == "lstm":
        out, (h, c) = R.lstm_layer(args[0], args[1], (args[2], args[3]), args[4:9], args[9])
        return out, h, c
    out, (h,) = R.gru_layer(args[0], args[1], (args[2],), (*args[3:7], None), args[7])
    return out, h


# Sizes chosen so that the inference path runs one chunk, several chunks with a short last one
# (chunks of 1024 rows at these widths, ProjectionChunks in csrc/common/plan.h: T=300, N=7 runs
# 146 + 146 + 8 steps; T=1100, N=1 runs 1024 + 76), and the small-batch recurrent path (N <= 16)
# and the BLAS one.
SIZES = [(1, 1, 3), (300, 7, 17), (9, 40, 8), (1100, 1, 5)]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("T,N,H", SIZES)
@pytest.mark.parametrize("layout", ["padded", "packed reverse", "packed proj"])
def test_inference_equals_training_path_and_reference(device, cell, T, N, H, layout):
    if cell == "gru" and "proj" in layout:
        pytest.skip("proj_size is an LSTM option")
    gen = torch.Generator().manual_seed(T * 1000 + N * 10 + H)
    packed, reverse, proj = "packed" in layout, "reverse" in layout, "proj" in layout
    args = _layer_args(cell, T, N, 4, H, packed, reverse, proj, torch.float64, device, gen)
    op = getattr(ops, cell)
    *trained, ws_train = op(*args, True)
    *inferred, ws_infer = op(*args, False)
    assert ws_infer.shape == (0,), "train=False must keep no workspace"
    assert ws_train.shape[0] == args[0].shape[0] * (1 if packed else args[0].shape[1])
    for name, a, b, r in zip(("output", "h_n", "c_n"), inferred, trained, _reference(cell, args)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inference_float32_matches_float64_reference(cell):
    gen = torch.Generator().manual_seed(5)
    args64 = _layer_args(cell, 50, 12, 9, 33, False, False, False, torch.float64, "cpu", gen)
    args32 = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                   for a in args64)
    *inferred, _ = getattr(ops, cell)(*args32, False)
    for a, r in zip(inferred, _reference(cell, args64)):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backward_through_an_inference_call_is_an_error(cell):
    gen = torch.Generator().manual_seed(0)
    args = list(_layer_args(cell, 3, 2, 4, 5, False, False, False, torch.float64, "cpu", gen))
    args[0].requires_grad_(True)
    with pytest.raises(RuntimeError, match=f"rnnkit::{cell} was called with train=False, which "
                                           "keeps no workspace for backward"):
        getattr(ops, cell)(*args, False)[0].sum().backward()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_opcheck_inference_call(cell):
    gen = torch.Generator().manual_seed(1)
    args = _layer_args(cell, 5, 3, 4, 7, True, True, cell == "lstm", torch.float64, "cpu", gen)
    torch.library.opcheck(getattr(ops, cell), (*args, False))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layers_keep_a_workspace_only_when_autograd_needs_it(cell, monkeypatch):
    """functional's layers pass train=True exactly when a backward can follow."""
    seen = []
    real = getattr(ops, cell)

    class Spy:
        def __getattr__(self, name):
            if name != cell:
                return getattr(ops, name)

            def call(*args):
                seen.append(args[-1])
                return real(*args)

            return call

    monkeypatch.setattr(F, "rnnkit_ops", Spy())
    theirs, ours = twins(cell.upper(), 4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        ours(x)
    assert seen == [False] * 4
    seen.clear()
    ours.requires_grad_(False)
    ours(x)  # nothing requires grad: inference even with grad mode on
    assert seen == [False] * 4
    seen.clear()
    ours(x.requires_grad_(True))[0].sum().backward()  # only the input requires grad
    assert seen == [True] * 4
    torch.testing.assert_close(x.grad, _input_grad(theirs, x), rtol=1e-10, atol=1e-10)


def _input_grad(module, x):
    x = x.detach().requires_grad_(True)
    module(x)[0].sum().backward()
    return x.grad


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_modules_under_no_grad_match_torch(device, kind):
    theirs, ours = twins(kind, 10, 12, num_layers=2, dtype=torch.float32)
    theirs, ours = theirs.to(device), ours.to(device)
    x = torch.randn(60, 20, 10, device=device)
    # cuDNN would compute float32 with TF32 (about 1e-3 relative) by default: compare at float32
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for a, b in zip(_flat(ours(x)), _flat(theirs(x))):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]
