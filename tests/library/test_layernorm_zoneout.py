"""Zoneout on the layer-normalised LSTM and GRU (zoneout::forward_row and backward_row around the
row-norm cells' passes, csrc/common/zoneout.h): against rnnkit.reference's LN layers with the same
masks in float64 (values, final states, the gradients of the input, the states and every
parameter, the norms included), padded and packed, both directions, T = 1, N = 1, odd H, both CPU
paths (small batch fused, BLAS) and the inference chunks; evaluation's expectation; gradcheck and
opcheck; bfloat16 and float16 within twice the reference's own error; the modules' options, their
repr, state dict and errors, which are rnnkit.LSTM/GRU's."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import rnnkit
from rnnkit import reference as R

from ..conftest import ALL_DEVICES
from ..helpers import assert_inference_equals_training
from .test_layernorm import LAYERS, _packed, _params, _states

ops = torch.ops.rnnkit
F64 = torch.float64


def _problem(cell, T, N, I, H, packed, seed, device="cpu"):
    """x (padded (T, N, I) or packed (P, I)), batch_sizes, and the leaves [*states, *params]."""
    gen = torch.Generator().manual_seed(seed)
    params = _params(cell, I, H, True, gen)
    states = _states(cell, N, H, gen)
    x, batch_sizes = _packed(T, N, I, gen) if packed else (
        torch.randn(T, N, I, generator=gen, dtype=F64), None)
    leaves = [*states, *params[:4], *params[4]]
    return x.to(device), batch_sizes, [t.to(device) for t in leaves]


def _zoneout(cell, T, N, H, probs, training, seed=1, device="cpu", dtype=F64):
    """The layer's zoneout entries: masks (T, N, H) per state (training), else the
    probabilities."""
    probs = probs[: 2 if cell == "lstm" else 1]
    if not training:
        return tuple(probs)
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.bernoulli(torch.full((T, N, H), p, dtype=F64), generator=gen)
                 .to(device=device, dtype=dtype) if p else None for p in probs)


def _run(fn, cell, x, batch_sizes, leaves, reverse, zone, seeds=None):
    """fn's output and final states, and the gradients of sum(result * seed) with respect to the
    input and leaves; all detached. seeds: one per result (random, fixed, if None)."""
    k = 2 if cell == "lstm" else 1
    xs = x.detach().clone().requires_grad_()
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    st, rest = tuple(copies[:k]), copies[k:]
    out, finals = fn(xs, batch_sizes, st, (*rest[:4], tuple(rest[4:])), reverse, zone)
    results = [out, *finals]
    if seeds is None:
        gen = torch.Generator().manual_seed(99)
        seeds = [torch.randn(r.shape, generator=gen, dtype=F64) for r in results]
    loss = sum((r.double() * s.to(r.device)).sum() for r, s in zip(results, seeds, strict=True))
    grads = torch.autograd.grad(loss, [xs, *copies])
    return [r.detach() for r in results] + list(grads)


CASES = [  # cell, T, N, I, H, packed, reverse
    ("lstm", 5, 3, 4, 7, False, False),
    ("lstm", 6, 5, 3, 5, True, True),
    ("lstm", 1, 1, 2, 3, False, False),    # T = 1, N = 1
    ("lstm", 4, 2, 3, 1, True, False),     # H = 1
    ("lstm", 4, 20, 3, 17, False, True),   # above the small-batch path's 16 rows: BLAS
    ("gru", 5, 3, 4, 7, False, False),
    ("gru", 6, 5, 3, 5, True, True),
    ("gru", 1, 1, 2, 3, False, True),
    ("gru", 4, 20, 3, 17, True, False),
]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["masks", "expectation"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_layer_matches_reference(case, training, device):
    """The same masks (training) or probabilities (evaluation, which can be differentiated):
    values, final states and every gradient as the reference's loop with the mix after each
    step."""
    cell, T, N, I, H, packed, reverse = case
    x, bs, leaves = _problem(cell, T, N, I, H, packed, seed=T * 100 + N * 10 + H, device=device)
    zone = _zoneout(cell, T, N, H, (0.4, 0.3), training, device=device)
    ours_fn, ref_fn = LAYERS[cell]
    got = _run(ours_fn, cell, x, bs, leaves, reverse, zone)
    want = _run(ref_fn, cell, x, bs, leaves, reverse, zone)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10,
                                   msg=lambda m, k=k: f"result {k}: {m}")


@pytest.mark.parametrize("probs", [(0.5, 0.0), (0.0, 0.5)], ids=["h_only", "c_only"])
def test_lstm_h_only_and_c_only(probs):
    x, bs, leaves = _problem("lstm", 4, 3, 3, 5, False, seed=2)
    zone = _zoneout("lstm", 4, 3, 5, probs, True)
    got = _run(LAYERS["lstm"][0], "lstm", x, bs, leaves, False, zone)
    want = _run(LAYERS["lstm"][1], "lstm", x, bs, leaves, False, zone)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("packed,reverse,training", [(False, False, True), (True, True, True),
                                                     (False, True, False)])
def test_gradcheck(cell, packed, reverse, training):
    T, N, I, H = 3, 3, 2, 3
    x, bs, leaves = _problem(cell, T, N, I, H, packed, seed=5)
    zone = _zoneout(cell, T, N, H, (0.5, 0.5), training, seed=3)
    k = 2 if cell == "lstm" else 1

    def f(x, *rest):
        st, p = rest[:k], rest[k:]
        out, finals = LAYERS[cell][0](x, bs, st, (*p[:4], tuple(p[4:])), reverse, zone)
        return out, *finals

    assert torch.autograd.gradcheck(f, [t.clone().requires_grad_() for t in [x, *leaves]])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("N", [3, 20])
def test_inference_path_matches_reference(cell, N):
    """No grad: the layer keeps no workspace and projects in chunks (cpu/chunks.h); the row mix
    keeps c_prev in its scratch row."""
    T, I, H = 6, 3, 9
    x, bs, leaves = _problem(cell, T, N, I, H, False, seed=4)
    k = 2 if cell == "lstm" else 1
    params = (*leaves[k:k + 4], tuple(leaves[k + 4:]))
    for zone in (_zoneout(cell, T, N, H, (0.3, 0.6), True), (0.3, 0.6)[:k]):
        ours_fn, ref_fn = LAYERS[cell]
        with torch.no_grad():
            out, final = ours_fn(x, bs, tuple(leaves[:k]), params, True, zone)
            out_r, final_r = ref_fn(x, bs, tuple(leaves[:k]), params, True, zone)
        torch.testing.assert_close(out, out_r, rtol=1e-10, atol=1e-10)
        for a, b in zip(final, final_r, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---- modules --------------------------------------------------------------------------------
def _reference_stack(m, x, batch_sizes, training):
    """The module's stack through rnnkit.reference, drawing the masks in the same order."""
    D = 2 if m.bidirectional else 1
    N = x.shape[1] if batch_sizes is None else int(batch_sizes[0])
    zeros = x.new_zeros(m.num_layers * D, N, m.hidden_size)
    lstm = m.mode == "LSTM"
    layer = R.layernorm_lstm_layer if lstm else R.layernorm_gru_layer
    return R.stack_layers(layer, x, batch_sizes, (zeros, zeros) if lstm else (zeros,),
                          m._layer_params(), m.num_layers, m.bidirectional, m.dropout, training,
                          m._zoneout_probs)


@pytest.mark.parametrize("cls,kw", [
    ("LayerNormLSTM", {"zoneout": 0.3, "zoneout_cell": 0.6, "num_layers": 2,
                       "bidirectional": True}),
    ("LayerNormLSTM", {"zoneout": 0.2}),
    ("LayerNormGRU", {"zoneout": 0.4, "num_layers": 2, "bidirectional": True})])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_module_matches_reference_stack(cls, kw, training, packed):
    torch.manual_seed(0)
    m = getattr(rnnkit, cls)(3, 5, dtype=F64, **kw).train(training)
    if packed:
        seqs = [torch.rand(n, 3, dtype=F64) for n in (4, 3, 1)]
        x = pack_sequence(seqs)
        data, batch_sizes = x.data, x.batch_sizes
    else:
        x = data = torch.rand(4, 3, 3, dtype=F64)
        batch_sizes = None
    torch.manual_seed(7)
    out, _ = m(x)
    torch.manual_seed(7)
    out_r, _ = _reference_stack(m, data, batch_sizes, training)
    torch.testing.assert_close(out.data if packed else out, out_r, rtol=1e-10, atol=1e-10)


def test_eval_is_the_expectation():
    """Out of training each state is p s_prev + (1 − p) s~, checked by hand for one step of each
    layer (the candidates from the reference's cells, which know nothing of zoneout)."""
    torch.manual_seed(0)
    x = torch.rand(1, 2, 3, dtype=F64)
    h0, c0 = torch.rand(1, 2, 5, dtype=F64), torch.rand(1, 2, 5, dtype=F64)
    lstm = rnnkit.LayerNormLSTM(3, 5, dtype=F64, zoneout=0.25, zoneout_cell=0.5).eval()
    out, (_, c) = lstm(x, (h0, c0))
    (w_ih, w_hh, b_ih, b_hh, norm), = lstm._layer_params()
    h_cand, c_cand = R.layernorm_lstm_cell(x[0], h0[0], c0[0], w_ih, w_hh, b_ih, b_hh, norm)
    torch.testing.assert_close(c[0], 0.5 * c0[0] + 0.5 * c_cand)
    torch.testing.assert_close(out[0], 0.25 * h0[0] + 0.75 * h_cand)
    gru = rnnkit.LayerNormGRU(3, 5, dtype=F64, zoneout=0.25).eval()
    out, _ = gru(x, h0)
    (w_ih, w_hh, b_ih, b_hh, norm), = gru._layer_params()
    cand = R.layernorm_gru_cell(x[0], h0[0], w_ih, w_hh, b_ih, b_hh, norm)
    torch.testing.assert_close(out[0], 0.25 * h0[0] + 0.75 * cand)


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_training_zones_out_a_fraction_p_of_units(cls):
    """In training a unit keeps its previous h exactly where its mask is 1: over 100,000 unit
    steps the fraction of repeats is p within 5 standard deviations."""
    p = 0.3
    torch.manual_seed(0)
    m = getattr(rnnkit, cls)(4, 100, dtype=F64, zoneout=p).train()
    x = torch.randn(21, 50, 4, dtype=F64)
    with torch.no_grad():
        out, _ = m(x)
    h = torch.cat([torch.zeros(1, 50, 100, dtype=F64), out])
    repeats = (h[1:] == h[:-1]).double().mean().item()
    assert abs(repeats - p) < 5 * (p * (1 - p) / out.numel()) ** 0.5


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_zero_probability_is_the_plain_layer_exactly(cls):
    kw = {"zoneout_cell": 0.0} if cls == "LayerNormLSTM" else {}
    torch.manual_seed(0)
    plain = getattr(rnnkit, cls)(3, 5, dtype=F64)
    torch.manual_seed(0)
    zero = getattr(rnnkit, cls)(3, 5, dtype=F64, zoneout=0.0, **kw)
    x = torch.rand(5, 2, 3, dtype=F64)
    assert torch.equal(plain(x)[0], zero(x)[0])


def test_module_options_repr_and_state_dict():
    m = rnnkit.LayerNormLSTM(3, 5, zoneout=0.1, zoneout_cell=0.2)
    assert "zoneout=0.1" in repr(m) and "zoneout_cell=0.2" in repr(m)
    assert (m.zoneout, m.zoneout_cell) == (0.1, 0.2)
    assert set(m.state_dict()) == set(rnnkit.LayerNormLSTM(3, 5).state_dict())
    g = rnnkit.LayerNormGRU(3, 5, zoneout=0.3)
    assert "zoneout=0.3" in repr(g) and not hasattr(g, "zoneout_cell")
    assert "zoneout" not in repr(rnnkit.LayerNormGRU(3, 5))
    assert set(g.state_dict()) == set(rnnkit.LayerNormGRU(3, 5).state_dict())


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.1", True, None])
def test_bad_probabilities_are_refused_as_by_the_plain_layers(bad):
    for cls in ("LayerNormLSTM", "LayerNormGRU"):
        with pytest.raises(ValueError, match=f"^{cls}: zoneout should be a probability in"):
            getattr(rnnkit, cls)(3, 5, zoneout=bad)
    if bad is not None:
        with pytest.raises(ValueError, match="^LayerNormLSTM: zoneout_cell should be a "
                                             "probability in"):
            rnnkit.LayerNormLSTM(3, 5, zoneout_cell=bad)
    with pytest.raises(TypeError, match="unexpected keyword argument 'zoneout_cell'"):
        rnnkit.LayerNormGRU(3, 5, zoneout_cell=0.1)


def test_module_errors_name_the_layernorm_class():
    """_RNNBase's checks name the class, not its mode (they said "LSTM:" for LayerNormLSTM)."""
    with pytest.raises(ValueError, match="^LayerNormLSTM: dropout should be a number"):
        rnnkit.LayerNormLSTM(3, 5, dropout=2.0)
    with pytest.raises(ValueError, match="^LayerNormGRU: weight_drop"):
        rnnkit.LayerNormGRU(3, 5, weight_drop=1.0)
    with pytest.raises(ValueError, match="^LSTM: dropout should be a number"):
        rnnkit.LSTM(3, 5, dropout=2.0)


def _op_args(cell, packed, training):
    T, N, I, H = 3, 2, 2, 4
    x, bs, leaves = _problem(cell, T, N, I, H, packed, seed=9)
    k = 2 if cell == "lstm" else 1
    states = leaves[:k] if cell == "lstm" else [leaves[0], None]
    zone = _zoneout(cell, T, N, H, (0.5, 0.5), training)
    z = []
    for entry in zone:
        z += [entry, 0.0] if isinstance(entry, torch.Tensor) else [None, entry]
    op = getattr(ops, f"layernorm_{cell}")
    return op, (x, bs, *states, *leaves[k:k + 4], torch.cat(leaves[k + 4:]), False, True, *z)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("packed,training", [(False, True), (True, True), (False, False)])
def test_opcheck(cell, packed, training):
    op, args = _op_args(cell, packed, training)
    torch.library.opcheck(op, args)


def test_operator_errors_name_what_was_expected():
    op, args = _op_args("gru", False, True)
    head = args[:11]  # input .. train
    mask = args[11]
    with pytest.raises(RuntimeError, match=r"zoneout_h \(T, N, R\) of shape \[3, 2, 4\], got"):
        op(*head, torch.zeros(3, 2, 5, dtype=F64), 0.0)
    with pytest.raises(RuntimeError, match=r"zoneout_h_p in \[0, 1\), got 1"):
        op(*head, None, 1.0)
    with pytest.raises(RuntimeError, match="got both"):
        op(*head, mask, 0.5)
    with pytest.raises(RuntimeError, match="expected zoneout_c None and zoneout_c_p 0 "
                                           r"\(layernorm_gru has no cell state\), got a mask"):
        op(*head, mask, 0.0, mask, 0.0)
    with pytest.raises(RuntimeError, match="has no cell state"):
        op(*head, None, 0.0, None, 0.5)
    lstm, largs = _op_args("lstm", False, True)
    with pytest.raises(RuntimeError, match=r"zoneout_c \(T, N, H\) of shape \[3, 2, 4\], got"):
        lstm(*largs[:13], torch.zeros(3, 1, 4, dtype=F64), 0.0)
    with pytest.raises(RuntimeError, match="dtype"):
        lstm(*largs[:11], torch.zeros(3, 2, 4), 0.0)


# ---- bfloat16 and float16 -------------------------------------------------------------------
BF16_CASES = [  # cell, T, N, I, H, packed, reverse
    ("lstm", 30, 3, 5, 17, False, False),
    ("lstm", 25, 5, 6, 33, True, True),
    ("lstm", 20, 20, 6, 40, False, False),  # a batch above the small-batch path
    ("lstm", 1, 2, 3, 5, False, False),     # T = 1
    ("gru", 30, 3, 5, 17, False, True),
    ("gru", 25, 20, 6, 33, True, False),
]


def _check_low_precision(dtype, cell, T, N, I, H, packed, reverse, training):
    """rnnkit's error against the float64 reference is at most twice the reference's own error in
    dtype, plus a floor of an eighth of dtype's epsilon, relative (as the plain zoneout tests)."""
    x, bs, leaves = _problem(cell, T, N, I, H, packed, seed=T * 7 + N + H)
    zone = _zoneout(cell, T, N, H, (0.3, 0.5), training, seed=T + H)
    ours_fn, ref_fn = LAYERS[cell]
    want = _run(ref_fn, cell, x, bs, leaves, reverse, zone)  # _run's seeds are fixed
    low = lambda t: t.to(dtype)
    zone_low = tuple(z.to(dtype) if isinstance(z, torch.Tensor) else z for z in zone)
    ref_low = _run(ref_fn, cell, low(x), bs, [low(t) for t in leaves], reverse, zone_low)
    got = _run(ours_fn, cell, low(x), bs, [low(t) for t in leaves], reverse, zone_low)
    eps = torch.finfo(dtype).eps
    bad = []
    for k, (w, r, o) in enumerate(zip(want, ref_low, got, strict=True)):
        assert o.dtype == dtype and o.shape == w.shape, k
        ours_err = float((o.double() - w).abs().max())
        ref_err = float((r.double() - w).abs().max())
        floor = eps / 8 * float(w.abs().max())
        if not ours_err <= 2 * ref_err + floor:
            bad.append(f"result {k}: rnnkit {ours_err:.3g} > 2 x reference {ref_err:.3g} "
                       f"+ {floor:.2g}")
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("training", [True, False], ids=["masks", "expectation"])
@pytest.mark.parametrize("case", BF16_CASES, ids=[str(c) for c in BF16_CASES])
def test_bf16_error_at_most_twice_reference(case, training):
    _check_low_precision(torch.bfloat16, *case, training=training)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float16_error_at_most_twice_reference(cell):
    _check_low_precision(torch.float16, cell, 30, 3, 5, 7, True, False, training=True)


@pytest.mark.parametrize("cls,N", [("LayerNormLSTM", 3), ("LayerNormLSTM", 20),
                                   ("LayerNormGRU", 1), ("LayerNormGRU", 20)])
def test_bf16_inference_equals_training_forward(cls, N):
    """Evaluation mode: inference (no workspace, chunked projection, c_prev in the scratch row)
    and training's forward mix with the same p, so they agree exactly."""
    torch.manual_seed(0)
    m = getattr(rnnkit, cls)(6, 9, bidirectional=True, zoneout=0.3).to(torch.bfloat16).eval()
    assert_inference_equals_training(m, torch.randn(40, N, 6).bfloat16())
