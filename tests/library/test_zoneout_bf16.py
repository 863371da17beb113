"""Zoneout in bfloat16 and float16 on the CPU: with the same masks (or, in evaluation, the same
probabilities), rnnkit's error against rnnkit.reference in float64 is at most twice the
reference's own error in that dtype (plus a floor of an eighth of the dtype's epsilon, relative),
for the output, the final states and every gradient; and inference computes what training's
forward does."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import functional as RF
from rnnkit import reference as ref

from ..helpers import assert_inference_equals_training

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
LAYERS = {"lstm": (RF.lstm_layer, ref.lstm_layer), "gru": (RF.gru_layer, ref.gru_layer),
          "rnn": (RF.rnn_layer("tanh"), ref.rnn_layer("tanh"))}


def _problem(kind, T, N, I, H, packed, proj, gen):
    """Float64 input (padded (T, N, I) or packed (P, I)), batch_sizes, states, params."""
    R = proj or H
    G = GATES[kind] * H
    x = torch.randn(T, N, I, dtype=torch.float64, generator=gen)
    batch_sizes = None
    if packed:
        lengths = torch.linspace(T, 1, N).round().long().clamp(min=1)
        lengths[0] = T
        x, batch_sizes = pack_padded_sequence(x, lengths, enforce_sorted=True)[:2]
    randn = lambda *s: torch.randn(*s, dtype=torch.float64, generator=gen)
    scale = H ** -0.5
    states = (randn(N, R),) + ((randn(N, H),) if kind == "lstm" else ())
    params = (randn(G, I) * scale, randn(G, R) * scale, randn(G) * scale, randn(G) * scale,
              randn(R, H) * scale if proj else None)
    return x, batch_sizes, states, params


def _run(layer, dtype, x, batch_sizes, states, params, reverse, zone, seeds):
    """The layer's output and final states, then the gradients of sum(result * seed) with
    respect to the input, the states and the parameters; all as float64."""
    leaves = [t.to(dtype).requires_grad_() for t in (x, *states)]
    ps = [None if p is None else p.to(dtype).requires_grad_() for p in params]
    z = tuple(m if m is None or isinstance(m, float) else m.to(dtype) for m in zone)
    out, final = layer(leaves[0], batch_sizes, tuple(leaves[1:]), tuple(ps), reverse, z)
    results = [out, *final]
    loss = sum((r.double() * s).sum() for r, s in zip(results, seeds, strict=True))
    grads = torch.autograd.grad(loss, leaves + [p for p in ps if p is not None])
    return [r.detach().double() for r in results] + [g.double() for g in grads]


def _check(kind, dtype, T, N, I, H, packed=False, reverse=False, proj=0, training=True,
           probs=(0.3, 0.5)):
    gen = torch.Generator().manual_seed(T * 1000 + N * 10 + H)
    x, bs, states, params = _problem(kind, T, N, I, H, packed, proj, gen)
    probs = probs[: len(states)]
    if training:
        widths = [proj or H, H][: len(states)]
        zone = tuple(torch.bernoulli(torch.full((T, N, F), p, dtype=torch.float64), generator=gen)
                     for F, p in zip(widths, probs))
    else:
        zone = probs
    ours, theirs = LAYERS[kind]
    with torch.no_grad():
        out, final = theirs(x, bs, states, params, reverse, zone)
    seeds = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in (out, *final)]
    want = _run(theirs, torch.float64, x, bs, states, params, reverse, zone, seeds)
    ref_low = _run(theirs, dtype, x, bs, states, params, reverse, zone, seeds)
    got = _run(ours, dtype, x, bs, states, params, reverse, zone, seeds)
    eps = torch.finfo(dtype).eps
    bad = []
    for k, (w, r, o) in enumerate(zip(want, ref_low, got, strict=True)):
        assert o.shape == w.shape, f"result {k}: shape {tuple(o.shape)} != {tuple(w.shape)}"
        ours_err, ref_err = float((o - w).abs().max()), float((r - w).abs().max())
        floor = eps / 8 * float(w.abs().max())
        if not ours_err <= 2 * ref_err + floor:
            bad.append(f"result {k}: rnnkit {ours_err:.3g} > 2 x reference {ref_err:.3g} "
                       f"+ {floor:.2g}")
    assert not bad, "; ".join(bad)


CASES = [  # kind, T, N, I, H, packed, reverse, proj
    ("lstm", 40, 3, 5, 7, False, False, 0),
    ("lstm", 30, 5, 6, 17, True, True, 0),
    ("lstm", 40, 4, 6, 11, False, True, 4),   # projection: h mixed after the product
    ("lstm", 50, 1, 8, 33, False, False, 0),  # the small-batch fused path
    ("lstm", 25, 20, 8, 40, True, False, 0),  # a batch above it: BLAS
    ("lstm", 1, 2, 3, 5, False, False, 0),    # T = 1
    ("gru", 40, 3, 5, 7, False, False, 0),
    ("gru", 30, 5, 6, 17, True, True, 0),
    ("gru", 50, 1, 8, 33, False, True, 0),
    ("gru", 25, 20, 8, 40, False, False, 0),
    ("rnn", 30, 5, 6, 17, True, False, 0),
]


@pytest.mark.parametrize("training", [True, False], ids=["masks", "expectation"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_bf16_zoneout_error_at_most_twice_reference(case, training):
    _check(*case[:1], torch.bfloat16, *case[1:], training=training)


@pytest.mark.parametrize("kind,proj", [("lstm", 0), ("lstm", 3), ("gru", 0)])
def test_float16_zoneout_error_at_most_twice_reference(kind, proj):
    _check(kind, torch.float16, 30, 3, 5, 7, packed=True, proj=proj)


def test_lstm_h_only_and_c_only_in_bf16():
    for probs in [(0.5, 0.0), (0.0, 0.5)]:
        _check("lstm", torch.bfloat16, 20, 3, 4, 9, probs=probs)


@pytest.mark.parametrize("kind,N,kwargs", [("LSTM", 3, {"proj_size": 4}), ("LSTM", 20, {}),
                                            ("GRU", 1, {}), ("GRU", 20, {}), ("RNN", 3, {})])
def test_bf16_inference_equals_training_forward(kind, N, kwargs):
    """Evaluation mode: inference (no workspace, chunked projection) and training's forward mix
    with the same p, so they agree exactly."""
    torch.manual_seed(0)
    m = getattr(rnnkit, kind)(6, 9, bidirectional=True, zoneout=0.3, **kwargs)
    m = m.to(torch.bfloat16).eval()
    assert_inference_equals_training(m, torch.randn(40, N, 6).bfloat16())


def test_bf16_module_trains_with_masks():
    """A bfloat16 LSTM with zoneout in training mode: masks in bfloat16, finite gradients for
    every parameter, and the masks change the result (zoneout is not skipped)."""
    torch.manual_seed(0)
    m = rnnkit.LSTM(4, 6, num_layers=2, zoneout=0.5, zoneout_cell=0.5).to(torch.bfloat16)
    x = torch.randn(12, 3, 4).bfloat16()
    out_a, _ = m(x)
    out_a.float().pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.bfloat16, name
        assert torch.isfinite(p.grad).all(), name
    out_b, _ = m(x)
    assert not torch.equal(out_a, out_b)
