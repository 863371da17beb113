"""weight_drop, variational_dropout, forget_bias and chrono_init on rnnkit's layers, and
rnnkit.init's functions on rnnkit's and torch.nn's modules."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
import rnnkit.functional as RF
import rnnkit.init

KINDS = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("LSTM", {"proj_size": 2})]
IDS = ["LSTM", "GRU", "RNN", "LSTM-proj"]
DT = torch.float64


def _pair(kind, extra, layers, bi, **variant):
    """A module with the variant options and a plain one with the same weights."""
    torch.manual_seed(0)
    cls = getattr(rnnkit, kind)
    ours = cls(3, 5, num_layers=layers, bidirectional=bi, dtype=DT, **extra, **variant)
    plain = cls(3, 5, num_layers=layers, bidirectional=bi, dtype=DT, **extra)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def _first(out):
    return out[0]


# ---- weight_drop ----------------------------------------------------------------------------
@pytest.mark.parametrize("k", range(len(KINDS)), ids=IDS)
@pytest.mark.parametrize("layers,bi", [(1, False), (2, True)])
def test_weight_drop_eval_equals_plain_layer(k, layers, bi):
    kind, extra = KINDS[k]
    ours, plain = _pair(kind, extra, layers, bi, weight_drop=0.5)
    ours.eval()
    x = torch.randn(4, 2, 3, dtype=DT)
    torch.testing.assert_close(_first(ours(x)), _first(plain(x)), rtol=0, atol=1e-12)


def _hh_names(module):
    return [n for n in module._flat_weights_names if n.startswith("weight_hh")]


@pytest.mark.parametrize("k", range(len(KINDS)), ids=IDS)
@pytest.mark.parametrize("layers,bi", [(1, False), (2, True)])
def test_weight_drop_training_is_the_plain_layer_with_the_dropped_weight(k, layers, bi):
    kind, extra = KINDS[k]
    p = 0.4
    ours, plain = _pair(kind, extra, layers, bi, weight_drop=p)
    x = torch.randn(6, 3, 3, dtype=DT)
    torch.manual_seed(123)
    out = _first(ours(x))
    # The same masks, drawn in the documented order: every weight_hh, layer by layer.
    torch.manual_seed(123)
    masks = {}
    for name in _hh_names(ours):
        w = getattr(ours, name)
        masks[name] = torch.empty(w.shape, dtype=DT).bernoulli_(1 - p)
    assert any(float(m.mean()) < 1 for m in masks.values())
    for name, m in masks.items():
        dropped = (getattr(ours, name).detach() * m / (1 - p)).requires_grad_()
        setattr(plain, name, torch.nn.Parameter(dropped))
    expected = _first(plain(x))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)

    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    for name, m in masks.items():
        torch.testing.assert_close(getattr(ours, name).grad,
                                   getattr(plain, name).grad * m / (1 - p), rtol=0, atol=1e-10)
    for name in ours._flat_weights_names:
        if name not in masks:
            torch.testing.assert_close(getattr(ours, name).grad, getattr(plain, name).grad,
                                       rtol=0, atol=1e-10)


def test_weight_drop_draws_a_fresh_mask_every_forward_and_keeps_the_state_dict():
    ours, plain = _pair("LSTM", {}, 1, False, weight_drop=0.5)
    assert list(ours.state_dict()) == list(plain.state_dict())
    x = torch.randn(5, 2, 3, dtype=DT)
    a, b = _first(ours(x)), _first(ours(x))
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, _first(plain(x)))
    before = ours.weight_hh_l0.detach().clone()
    ours(x)
    assert torch.equal(ours.weight_hh_l0, before)  # the parameter itself is never masked


# ---- variational dropout ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_variational_mask_is_shared_over_time_at_the_first_layer_input(kind, monkeypatch):
    ours, _ = _pair(kind, {}, 2, True, variational_dropout=0.5)
    seen = []
    layer_fn = {"LSTM": "lstm_layer", "GRU": "gru_layer"}.get(kind)
    if layer_fn is None:
        real = ours._layer()
        monkeypatch.setattr(ours, "_layer", lambda: _spy(real, seen))
    else:
        monkeypatch.setattr(RF, layer_fn, _spy(getattr(RF, layer_fn), seen))
    x = torch.rand(7, 4, 3, dtype=DT) + 0.5  # no zero of its own
    ours(x)
    first = seen[0]  # layer 0, forward direction
    zeros = first == 0
    assert zeros.any() and not zeros.all()
    assert torch.equal(zeros, zeros[:1].expand_as(zeros))  # zeroed at t=0 <=> at every t
    assert torch.equal(seen[1], first)  # both directions see the same masked input
    kept = first[~zeros]
    torch.testing.assert_close(kept, (x * 2)[~zeros])  # scaled by 1/(1 - p)


def _spy(layer, seen):
    def run(x, *args):
        seen.append(x.detach().clone())
        return layer(x, *args)
    return run


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_variational_training_is_the_plain_layer_on_masked_inputs(kind, layout):
    p = 0.3
    ours, plain = _pair(kind, {}, 2, False, variational_dropout=p)
    T, N = 6, 4
    x = torch.randn(T, N, 3, dtype=DT)
    lengths = torch.tensor([6, 5, 3, 1])
    packed = layout == "packed"
    data = pack_padded_sequence(x, lengths) if packed else x
    torch.manual_seed(7)
    out = ours(data)[0]
    torch.manual_seed(7)
    m0 = torch.empty(N, 3, dtype=DT).bernoulli_(1 - p) / (1 - p)
    m1 = torch.empty(N, 5, dtype=DT).bernoulli_(1 - p) / (1 - p)
    # The plain layers, one by one, on inputs masked per sequence.
    layer0 = getattr(rnnkit, kind)(3, 5, dtype=DT)
    layer1 = getattr(rnnkit, kind)(5, 5, dtype=DT)
    for j, layer in enumerate((layer0, layer1)):
        for base in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, f"{base}_l0").data.copy_(getattr(plain, f"{base}_l{j}"))
    h = x * m0
    h = layer0(pack_padded_sequence(h, lengths) if packed else h)[0]
    if packed:
        h = pad_packed_sequence(h)[0]
    h = h * m1
    expected = layer1(pack_padded_sequence(h, lengths) if packed else h)[0]
    if packed:
        out, expected = pad_packed_sequence(out)[0], pad_packed_sequence(expected)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_variational_eval_unchanged_and_combines_with_dropout():
    ours, plain = _pair("GRU", {}, 2, False, variational_dropout=0.5)
    x = torch.randn(4, 3, 3, dtype=DT)
    ours.eval()
    torch.testing.assert_close(_first(ours(x)), _first(plain(x)), rtol=0, atol=1e-12)
    both = rnnkit.GRU(3, 5, num_layers=2, dropout=0.5, variational_dropout=0.5, dtype=DT)
    both.load_state_dict(ours.state_dict())
    assert not torch.allclose(_first(both(x)), _first(plain(x)))


# ---- initialisation ---------------------------------------------------------------------------
def _blocks(bias, hidden):
    return bias.detach().reshape(-1, hidden)


@pytest.mark.parametrize("make", [
    lambda **kw: rnnkit.LSTM(3, 7, num_layers=2, bidirectional=True, **kw),
    lambda **kw: rnnkit.GRU(3, 7, num_layers=2, **kw),
], ids=["LSTM", "GRU"])
def test_forget_bias_option_sets_the_forget_gate_slices(make):
    m = make(forget_bias=1.5)
    reference = make()
    for name, p in m.named_parameters():
        if name.startswith("bias_ih"):
            blocks = _blocks(p, 7)
            assert torch.equal(blocks[1], torch.full((7,), 1.5))
            assert not torch.equal(blocks[0], torch.full((7,), 1.5))
        elif name.startswith("bias_hh"):
            assert torch.equal(_blocks(p, 7)[1], torch.zeros(7))
    assert list(m.state_dict()) == list(reference.state_dict())
    converted = m.to_torch()  # init options are just values
    torch.testing.assert_close(converted.bias_ih_l0, m.bias_ih_l0)


@pytest.mark.parametrize("module", [
    lambda: torch.nn.LSTM(2, 9, num_layers=2, bidirectional=True),
    lambda: torch.nn.LSTMCell(2, 9),
    lambda: torch.nn.GRU(2, 9),
    lambda: torch.nn.GRUCell(2, 9),
    lambda: rnnkit.LSTMCell(2, 9),
], ids=["nn.LSTM", "nn.LSTMCell", "nn.GRU", "nn.GRUCell", "rnnkit.LSTMCell"])
def test_init_functions_work_on_torch_nn_modules(module):
    m = rnnkit.init.forget_bias_(module(), -0.5)
    biases = [p for n, p in m.named_parameters() if n.startswith("bias_ih")]
    assert biases
    for b in biases:
        assert torch.equal(_blocks(b, 9)[1], torch.full((9,), -0.5))
    torch.manual_seed(3)
    m = rnnkit.init.chrono_init_(module(), 50)
    for name, p in m.named_parameters():
        blocks = _blocks(p, 9)
        if name.startswith("bias_ih"):
            assert blocks[1].min() >= 0 and blocks[1].max() <= math.log(49)
            if blocks.shape[0] == 4:
                assert torch.equal(blocks[0], -blocks[1])
        if name.startswith("bias_hh"):
            assert torch.equal(blocks[1], torch.zeros(9))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_chrono_init_draws_log_uniform_biases(kind):
    t_max, hidden = 100, 4000
    torch.manual_seed(11)
    m = getattr(rnnkit, kind)(2, hidden, chrono_init=t_max, dtype=DT)
    b_ih, b_hh = _blocks(m.bias_ih_l0, hidden), _blocks(m.bias_hh_l0, hidden)
    forget = b_ih[1]
    u = forget.exp()
    assert u.min() >= 1 and u.max() <= t_max - 1
    # exp(b_f) is U(1, T_max - 1): its mean and quartiles, within a few standard errors.
    width = t_max - 2
    assert abs(float(u.mean()) - (1 + width / 2)) < 4 * width / math.sqrt(12 * hidden)
    for q in (0.25, 0.5, 0.75):
        assert abs(float(u.quantile(q)) - (1 + q * width)) < 0.05 * width
    assert torch.equal(b_hh[1], torch.zeros(hidden))
    if kind == "LSTM":
        assert torch.equal(b_ih[0], -forget)
        assert torch.equal(b_hh[0], torch.zeros(hidden, dtype=DT))
    # The other gates keep torch.nn's initialisation.
    bound = 1 / math.sqrt(hidden)
    rest = b_ih[2:] if kind == "LSTM" else b_ih[[0, 2]]
    assert rest.abs().max() <= bound


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,words", [
    ({"weight_drop": 1.0}, "weight_drop: expected a probability"),
    ({"weight_drop": -0.1}, "weight_drop: expected a probability"),
    ({"weight_drop": True}, "weight_drop: expected a probability"),
    ({"variational_dropout": "0.5"}, "variational_dropout: expected a probability"),
    ({"forget_bias": float("nan")}, "forget_bias: expected a finite number"),
    ({"chrono_init": 2}, "chrono_init: expected T_max, an integer >= 3"),
    ({"chrono_init": 10.5}, "chrono_init: expected T_max, an integer >= 3"),
    ({"forget_bias": 1.0, "chrono_init": 10}, "forget_bias and chrono_init both"),
    ({"forget_bias": 1.0, "bias": False}, "expected bias=True"),
])
def test_bad_options_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        rnnkit.LSTM(3, 4, **kwargs)


@pytest.mark.parametrize("arg,value", [("forget_bias", 1.0), ("chrono_init", 10)])
def test_elman_rnn_has_no_forget_gate(arg, value):
    with pytest.raises(ValueError, match="needs a gated cell"):
        rnnkit.RNN(3, 4, **{arg: value})
    with pytest.raises(ValueError, match="only gated cells"):
        getattr(rnnkit.init, f"{arg}_" if arg == "forget_bias" else "chrono_init_")(
            torch.nn.RNN(3, 4), value)


def test_init_functions_refuse_modules_without_biases():
    with pytest.raises(ValueError, match="bias=False"):
        rnnkit.init.forget_bias_(torch.nn.LSTM(3, 4, bias=False), 1.0)
    with pytest.raises(ValueError, match="torch.nn's parameter names"):
        rnnkit.init.chrono_init_(torch.nn.Linear(3, 4), 10)


@pytest.mark.parametrize("arg", ["weight_drop", "variational_dropout"])
def test_to_torch_refuses_the_dropouts(arg):
    m = rnnkit.GRU(3, 4, **{arg: 0.2})
    with pytest.raises(ValueError, match=f"torch.nn has no {arg}"):
        m.to_torch()
    setattr(m, arg, 0.0)
    assert isinstance(m.to_torch(), torch.nn.GRU)


def test_defaults_change_nothing():
    torch.manual_seed(5)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.0)
    ours = rnnkit.from_torch(theirs)
    assert (ours.weight_drop, ours.variational_dropout, ours.forget_bias, ours.chrono_init) == \
        (0.0, 0.0, None, None)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    assert repr(ours) == repr(theirs)
