"""Zoneout (csrc/common/zoneout.h) against rnnkit.reference in float64: the same masks, values,
gradients, gradcheck, opcheck; evaluation's expectation; the module options and their errors."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import functional as RF
from rnnkit import reference as ref

from ..conftest import ALL_DEVICES

DT = torch.float64
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "rnn_tanh": 1, "rnn_relu": 1}


def _layers(kind: str):
    """(rnnkit's layer function, the reference's) for one cell kind."""
    if kind == "lstm":
        return RF.lstm_layer, ref.lstm_layer
    if kind == "gru":
        return RF.gru_layer, ref.gru_layer
    act = kind.split("_")[1]
    return RF.rnn_layer(act), ref.rnn_layer(act)


def _problem(kind, T, N, I, H, packed, proj=0, seed=0, device="cpu"):
    """Input (padded or packed), batch_sizes, states, params, all float64 requiring grad."""
    g = torch.Generator().manual_seed(seed)

    def rand(*s):
        return (torch.rand(*s, generator=g, dtype=DT) - 0.5).to(device).requires_grad_()

    G = GATES[kind] * H
    R = proj or H
    if packed:
        lengths = torch.linspace(T, 1, N).round().long().clamp(min=1)
        lengths[0] = T
        x = torch.rand(T, N, I, generator=g, dtype=DT) - 0.5
        p = pack_padded_sequence(x, lengths, enforce_sorted=True)
        x, batch_sizes = p.data.to(device).requires_grad_(), p.batch_sizes
    else:
        x, batch_sizes = rand(T, N, I), None
    states = (rand(N, R),) + ((rand(N, H),) if kind == "lstm" else ())
    params = (rand(G, I), rand(G, R), rand(G), rand(G), rand(R, H) if proj else None)
    return x, batch_sizes, states, params


def _masks(T, N, widths, probs, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.bernoulli(torch.full((T, N, F), p, dtype=DT), generator=g).to(device)
                 if p else None for F, p in zip(widths, probs))


def _leaves(x, states, params):
    return [t for t in (x, *states, *params) if t is not None]


def _compare(kind, T, N, I, H, packed, reverse, proj=0, probs=(0.4, 0.3), eval_p=False,
             device="cpu"):
    x, bs, states, params = _problem(kind, T, N, I, H, packed, proj, device=device)
    ours, theirs = _layers(kind)
    widths = [proj or H, H][: len(states)]
    probs = probs[: len(states)]
    zone = probs if eval_p else _masks(T, N, widths, probs, device=device)
    out, final = ours(x, bs, states, params, reverse, zone)
    out_r, final_r = theirs(x, bs, states, params, reverse, zone)
    torch.testing.assert_close(out, out_r)
    for a, b in zip(final, final_r):
        torch.testing.assert_close(a, b)
    # Gradients of a loss on every output, weighted so that no two entries share a gradient.
    leaves = _leaves(x, states, params)
    w = [torch.rand_like(t) for t in (out, *final)]
    loss = lambda o, f: sum((a * b).sum() for a, b in zip(w, (o, *f)))  # noqa: E731
    got = torch.autograd.grad(loss(out, final), leaves)
    want = torch.autograd.grad(loss(out_r, final_r), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


CASES = [  # kind, T, N, I, H, packed, reverse, proj
    ("lstm", 5, 3, 4, 7, False, False, 0),
    ("lstm", 6, 5, 3, 5, True, True, 0),
    ("lstm", 4, 3, 3, 6, False, True, 3),
    ("lstm", 5, 4, 3, 6, True, False, 2),
    ("gru", 5, 3, 4, 7, False, False, 0),
    ("gru", 6, 5, 3, 5, True, True, 0),
    ("rnn_tanh", 5, 3, 4, 7, True, False, 0),
    ("rnn_relu", 5, 3, 4, 7, False, True, 0),
    ("lstm", 1, 1, 2, 3, False, False, 0),  # T = 1, N = 1
    ("gru", 1, 1, 2, 1, False, True, 0),
    ("lstm", 4, 20, 3, 17, False, False, 0),  # above the small-batch path's 16 rows
    ("gru", 4, 20, 3, 33, True, True, 0),
    ("rnn_tanh", 3, 20, 3, 17, False, False, 0),
]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_layer_matches_reference_with_the_same_masks(case, device):
    _compare(*case, device=device)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", CASES[:8], ids=[str(c) for c in CASES[:8]])
def test_layer_with_the_expectation_matches_reference(case, device):
    """Evaluation's mix with p, values and gradients (a model in eval mode can be
    differentiated)."""
    _compare(*case, eval_p=True, device=device)


def test_lstm_h_only_and_c_only():
    for probs in [(0.5, 0.0), (0.0, 0.5)]:
        _compare("lstm", 4, 3, 3, 5, False, False, probs=probs)


@pytest.mark.parametrize("kind,packed,reverse,proj", [
    ("lstm", False, False, 0), ("lstm", True, True, 0), ("lstm", False, False, 2),
    ("gru", True, False, 0), ("rnn_tanh", False, True, 0), ("rnn_relu", True, False, 0)])
def test_gradcheck(kind, packed, reverse, proj):
    T, N, I, H = 3, 2, 2, 3
    x, bs, states, params = _problem(kind, T, N, I, H, packed, proj, seed=5)
    widths = [proj or H, H][: len(states)]
    zone = _masks(T, N, widths, (0.5, 0.5)[: len(states)], seed=3)
    ours, _ = _layers(kind)
    leaves = _leaves(x, states, params)
    n_states = len(states)

    def f(x, *rest):
        st, pr = rest[:n_states], list(rest[n_states:])
        full = pr + [None] * (5 - len(pr))
        out, final = ours(x, bs, st, tuple(full), reverse, zone)
        return (out, *final)

    assert torch.autograd.gradcheck(f, leaves)


def test_double_backward_matches_reference():
    x, bs, states, params = _problem("lstm", 3, 2, 2, 3, False)
    zone = _masks(3, 2, [3, 3], (0.5, 0.5))
    leaves = _leaves(x, states, params)

    def second(layer):
        out, (h, c) = layer(x, bs, states, params, False, zone)
        g = torch.autograd.grad((out ** 2).sum() + h.sum() + c.sum(), leaves, create_graph=True)
        return torch.autograd.grad(sum((t ** 2).sum() for t in g), leaves)

    for a, b in zip(second(RF.lstm_layer), second(ref.lstm_layer)):
        torch.testing.assert_close(a, b)


def test_inference_path_with_masks_matches_reference():
    """No grad: the layer keeps no workspace and projects in chunks (cpu/chunks.h)."""
    for kind, N in [("lstm", 3), ("lstm", 20), ("gru", 20), ("rnn_tanh", 3)]:
        x, bs, states, params = _problem(kind, 6, N, 3, 9, False)
        zone = _masks(6, N, [9, 9][: len(states)], (0.3, 0.6)[: len(states)])
        ours, theirs = _layers(kind)
        with torch.no_grad():
            out, final = ours(x, bs, states, params, True, zone)
            out_r, final_r = theirs(x, bs, states, params, True, zone)
        torch.testing.assert_close(out, out_r)
        for a, b in zip(final, final_r):
            torch.testing.assert_close(a, b)


# ---- modules ----------------------------------------------------------------------------------
def _module_pair(cls, **kw):
    torch.manual_seed(0)
    m = getattr(rnnkit, cls)(3, 5, dtype=DT, **kw)
    return m


def _reference_run(m, x, training):
    """The module's stack through rnnkit.reference, drawing the masks in the same order."""
    lstm = m.mode == "LSTM"
    D = 2 if m.bidirectional else 1
    N = x.shape[1]
    h0 = x.new_zeros(m.num_layers * D, N, m.proj_size or m.hidden_size)
    layer = {"LSTM": ref.lstm_layer, "GRU": ref.gru_layer, "RNN_TANH": ref.rnn_layer("tanh"),
             "RNN_RELU": ref.rnn_layer("relu")}[m.mode]
    states = (h0, x.new_zeros(m.num_layers * D, N, m.hidden_size)) if lstm else (h0,)
    return ref.stack_layers(layer, x, None, states, m._layer_params(), m.num_layers,
                            m.bidirectional, m.dropout, training, m._zoneout_probs)


@pytest.mark.parametrize("cls,kw", [
    ("LSTM", dict(zoneout=0.3, zoneout_cell=0.6, num_layers=2, bidirectional=True)),
    ("LSTM", dict(zoneout=0.2, proj_size=2)),
    ("GRU", dict(zoneout=0.4, num_layers=2)),
    ("RNN", dict(zoneout=0.4, bidirectional=True, nonlinearity="relu"))])
@pytest.mark.parametrize("training", [True, False])
def test_module_matches_reference_stack(cls, kw, training):
    m = _module_pair(cls, **kw).train(training)
    x = torch.rand(4, 3, 3, dtype=DT)
    torch.manual_seed(7)
    out, _ = m(x)
    torch.manual_seed(7)
    out_r, _ = _reference_run(m, x, training)
    torch.testing.assert_close(out, out_r)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_zero_probability_is_the_plain_layer_exactly(cls):
    kw = dict(zoneout_cell=0.0) if cls == "LSTM" else {}
    plain, zero = _module_pair(cls), _module_pair(cls, zoneout=0.0, **kw)
    x = torch.rand(5, 2, 3, dtype=DT)
    a, b = plain(x), zero(x)
    assert torch.equal(a[0], b[0])


def test_same_seed_same_result_and_another_seed_differs():
    m = _module_pair("LSTM", zoneout=0.5).train()
    x = torch.rand(6, 4, 3, dtype=DT)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(m(x)[0])
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_training_zones_out_a_fraction_p_of_units(p):
    """In training a unit keeps its previous h exactly where its mask is 1: over 200,000 unit
    steps the fraction of repeats is p within 5 standard deviations (a candidate equal to the
    previous state by chance has probability ~0 in float64)."""
    torch.manual_seed(0)
    m = rnnkit.GRU(4, 100, dtype=DT, zoneout=p).train()
    x = torch.randn(41, 50, 4, dtype=DT)
    with torch.no_grad():
        out, _ = m(x)
    h = torch.cat([torch.zeros(1, 50, 100, dtype=DT), out])
    repeats = (h[1:] == h[:-1]).double().mean().item()
    sd = (p * (1 - p) / out.numel()) ** 0.5
    assert abs(repeats - p) < 5 * sd


def test_eval_is_the_expectation():
    """Out of training each state is p s_{t-1} + (1 − p) s~_t, checked by hand for one step."""
    m = _module_pair("RNN", zoneout=0.25).eval()
    x = torch.rand(1, 2, 3, dtype=DT)
    h0 = torch.rand(1, 2, 5, dtype=DT)
    out, _ = m(x, h0)
    cand = torch.tanh(x[0] @ m.weight_ih_l0.t() + m.bias_ih_l0 + h0[0] @ m.weight_hh_l0.t()
                      + m.bias_hh_l0)
    torch.testing.assert_close(out[0], 0.25 * h0[0] + 0.75 * cand)


def test_module_options_repr_state_dict_and_conversion():
    m = rnnkit.LSTM(3, 5, zoneout=0.1, zoneout_cell=0.2)
    assert "zoneout=0.1" in repr(m) and "zoneout_cell=0.2" in repr(m)
    assert set(m.state_dict()) == set(rnnkit.LSTM(3, 5).state_dict())
    with pytest.raises(ValueError, match="has no zoneout"):
        m.to_torch()
    assert rnnkit.LSTM(3, 5, zoneout=0.0).to_torch().hidden_size == 5
    assert "zoneout=0.3" in repr(rnnkit.GRU(3, 5, zoneout=0.3))
    assert "zoneout" not in repr(rnnkit.RNN(3, 5))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.1", True, None])
def test_bad_probabilities_are_refused(bad):
    with pytest.raises(ValueError, match="zoneout should be a probability in"):
        rnnkit.LSTM(3, 5, zoneout=bad)
    with pytest.raises(ValueError, match="zoneout should be a probability in"):
        rnnkit.GRU(3, 5, zoneout=bad)
    if bad is not None:
        with pytest.raises(ValueError, match="zoneout_cell should be a probability in"):
            rnnkit.LSTM(3, 5, zoneout_cell=bad)
    with pytest.raises(TypeError, match="zoneout_cell"):
        rnnkit.GRU(3, 5, zoneout_cell=0.1)


def test_operator_errors_name_what_was_expected():
    x, bs, (h0,), (w_ih, w_hh, b_ih, b_hh, _) = _problem("gru", 3, 2, 2, 4, False)
    ops = torch.ops.rnnkit
    with pytest.raises(RuntimeError, match=r"zoneout_h \(T, N, R\) of shape \[3, 2, 4\], got"):
        ops.gru(x, None, h0, w_ih, w_hh, b_ih, b_hh, False, True, torch.zeros(3, 2, 5, dtype=DT))
    with pytest.raises(RuntimeError, match=r"zoneout_h_p in \[0, 1\), got 1"):
        ops.gru(x, None, h0, w_ih, w_hh, b_ih, b_hh, False, True, None, 1.0)
    with pytest.raises(RuntimeError, match="got both"):
        ops.gru(x, None, h0, w_ih, w_hh, b_ih, b_hh, False, True, torch.zeros(3, 2, 4, dtype=DT),
                0.5)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.gru(x, None, h0, w_ih, w_hh, b_ih, b_hh, False, True, torch.zeros(3, 2, 4))


# ---- opcheck ------------------------------------------------------------------------------------
def _op_args(kind, packed):
    x, bs, states, (w_ih, w_hh, b_ih, b_hh, w_hr) = _problem(kind, 3, 2, 2, 4, packed, seed=9)
    T, N = 3, 2
    m = _masks(T, N, [4, 4], (0.5, 0.5))
    if kind == "lstm":
        return torch.ops.rnnkit.lstm, (x, bs, *states, w_ih, w_hh, b_ih, b_hh, None, False, True,
                                       m[0], 0.0, m[1], 0.0)
    if kind == "gru":
        return torch.ops.rnnkit.gru, (x, bs, *states, w_ih, w_hh, b_ih, b_hh, True, True, m[0],
                                      0.0)
    return torch.ops.rnnkit.rnn, (x, bs, *states, w_ih, w_hh, b_ih, b_hh, "tanh", False, m[0],
                                  0.0)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("packed", [False, True])
def test_opcheck_with_masks(kind, packed):
    op, args = _op_args(kind, packed)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_opcheck_with_the_probability(kind):
    op, args = _op_args(kind, False)
    args = list(args)
    for k, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.dim() == 3 and k > 0 and not a.requires_grad:
            args[k], args[k + 1] = None, 0.4
    torch.library.opcheck(op, tuple(args))


# ---- any cell: the test-only cell gets zoneout from the time loop alone ------------------------
def test_testing_cell_zones_out_through_the_general_step():
    """rnnkit_testing::mgu (csrc/common/cells/testing_mgu.h) knows nothing of zoneout; its
    operators zone out h as rnnkit's own do, forward and backward (checked against its equations
    with the mix after each step)."""
    from .test_testing_cell import mgu_step

    testing = torch.ops.rnnkit_testing
    T, N, I, H = 5, 3, 2, 7
    g = torch.Generator().manual_seed(4)
    rand = lambda *s: (torch.rand(*s, generator=g, dtype=DT) - 0.5).requires_grad_()  # noqa: E731
    x, h0, w_ih, w_hh, b_ih, b_hh = rand(T, N, I), rand(N, H), rand(2 * H, I), rand(2 * H, H), \
        rand(2 * H), rand(2 * H)
    (mask,) = _masks(T, N, [H], [0.5])
    out, h_n, ws = testing.mgu(x, None, h0, w_ih, w_hh, b_ih, b_hh, False, True, mask, 0.0)
    h, outs = h0, []
    for t in range(T):
        h = mask[t] * h + (1 - mask[t]) * mgu_step(x[t], h, w_ih, w_hh, b_ih, b_hh)
        outs.append(h)
    ref_out = torch.stack(outs)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h_n, h)
    g_out, g_h = torch.rand_like(out), torch.rand_like(h_n)
    got = testing.mgu_backward(g_out, g_h, x, None, h0, w_ih, w_hh, out, ws, False, mask, 0.0)
    want = torch.autograd.grad((ref_out, h), (x, h0, w_ih, w_hh, b_ih, b_hh), (g_out, g_h))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_onnx_export_refuses_zoneout_in_one_line(cls):
    """ONNX's recurrent operators have no zoneout: an eval-mode export (which would mix with the
    expectation) is refused rather than exported without it."""
    pytest.importorskip("onnxscript")
    from rnnkit import onnx as rko

    model = getattr(rnnkit, cls)(3, 5, zoneout=0.2).eval()
    with pytest.raises(rko.UnsupportedForONNX, match="zoneout") as error:
        rko.export(model, (torch.randn(4, 2, 3),))
    assert "\n" not in str(error.value)
