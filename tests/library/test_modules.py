"""Module contract: parameter names and shapes, initialisation, state dicts both ways,
from_torch / to_torch, repr, torch.compile."""

from __future__ import annotations

import pytest
import torch

import rnnkit

LAYERS = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"}),
          ("LSTM", {"proj_size": 4})]
CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"})]


@pytest.mark.parametrize("kind,extra", LAYERS + CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_same_parameters_as_torch(kind, extra, bias):
    args = (5, 9) if "Cell" in kind else (5, 9)
    kwargs = dict(bias=bias, **extra)
    if "Cell" not in kind:
        kwargs.update(num_layers=2, bidirectional=True)
    theirs = getattr(torch.nn, kind)(*args, **kwargs)
    ours = getattr(rnnkit, kind)(*args, **kwargs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
           [(n, p.shape) for n, p in theirs.named_parameters()]
    # both ways, strict
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    # same repr, except that rnnkit also names a relu nonlinearity (torch.nn's layers omit it)
    ours_repr = repr(ours).split("(", 1)[1].replace(", nonlinearity='relu'", "")
    assert ours_repr == repr(theirs).split("(", 1)[1].replace(", nonlinearity='relu'", "")


@pytest.mark.parametrize("kind,extra", LAYERS + CELLS)
def test_round_trip_through_torch(kind, extra):
    theirs = getattr(torch.nn, kind)(3, 6, **extra)
    ours = rnnkit.from_torch(theirs)
    back = ours.to_torch()
    assert type(back) is type(theirs)
    for (n, a), (_, b) in zip(theirs.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="expected one of torch.nn.RNNCell.*got Linear"):
        rnnkit.from_torch(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["LSTM", "GRUCell"])
def test_initialisation_is_uniform_in_one_over_sqrt_hidden(kind):
    torch.manual_seed(0)
    m = getattr(rnnkit, kind)(64, 100)
    values = torch.cat([p.detach().flatten() for p in m.parameters()])
    bound = 1 / 100**0.5
    assert values.abs().max() <= bound
    assert values.abs().max() > 0.99 * bound  # spread over the whole interval
    assert abs(values.mean()) < 0.01 * bound * 10
    assert abs(values.std() - bound / 3**0.5) < 0.02 * bound


def test_flatten_parameters_is_accepted():
    m = rnnkit.LSTM(3, 4)
    m.flatten_parameters()
    assert len(m.all_weights) == 1 and len(m.all_weights[0]) == 4


def test_device_and_dtype_arguments():
    m = rnnkit.GRU(3, 4, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("grad", [True, False])
def test_final_states_detach_in_place_as_torch_nn(kind, num_layers, grad):
    """Truncated-BPTT loops call h_n.detach_() on torch.nn's final states, which are not views;
    rnnkit's are not either (a view would refuse it)."""
    torch.manual_seed(0)
    ours = getattr(rnnkit, kind)(3, 5, num_layers=num_layers)
    x = torch.randn(4, 2, 3)
    with torch.set_grad_enabled(grad):
        _, finals = ours(x)
    for state in finals if kind == "LSTM" else (finals,):
        assert not state._is_view()
        state.detach_()
        assert state.grad_fn is None


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_compiled_module_fullgraph_matches_eager(kind):
    m = getattr(rnnkit, kind)(6, 8, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 5, 6, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out_c, out_e = compiled(x)[0], m(x)[0]
    torch.testing.assert_close(out_c, out_e)
    gc = torch.autograd.grad(out_c.sum(), [x] + list(m.parameters()))
    ge = torch.autograd.grad(out_e.sum(), [x] + list(m.parameters()))
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_compiled_with_inductor_matches_eager():
    """The default backend (inductor, which generates and compiles C++ here)."""
    m = rnnkit.LSTM(6, 8)
    x = torch.randn(4, 2, 6)
    compiled = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(compiled(x)[0], m(x)[0])
