"""weight_drop, variational_dropout, forget_bias and chrono_init on the layer-normalised layers
(rnnkit.LayerNormLSTM, LayerNormGRU), which take them through rnnkit.nn._RNNBase: each against
the plain layer-normalised layer run by hand with the same masks or biases, in float64."""

from __future__ import annotations

import math

import pytest
import torch

import rnnkit

DT = torch.float64
H = 5


def _pair(cls, layers: int, bi: bool, **variant):
    """A layer with the variant options and a plain one with the same parameters (norms too)."""
    torch.manual_seed(0)
    ours = cls(3, H, num_layers=layers, bidirectional=bi, dtype=DT, **variant)
    plain = cls(3, H, num_layers=layers, bidirectional=bi, dtype=DT)
    with torch.no_grad():  # gains and shifts away from identity, so that a dropped norm shows
        for name, p in ours.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.3 * torch.randn_like(p))
    plain.load_state_dict(ours.state_dict())
    return ours, plain


@pytest.mark.parametrize("layers,bi", [(1, False), (2, True)])
def test_weight_drop_is_the_plain_layer_with_the_dropped_weight(layers, bi):
    p = 0.4
    ours, plain = _pair(rnnkit.LayerNormLSTM, layers, bi, weight_drop=p)
    x = torch.randn(6, 3, 3, dtype=DT)
    torch.manual_seed(123)
    out = ours(x)[0]
    # The same masks, in the documented order: every weight_hh, layer by layer.
    torch.manual_seed(123)
    names = [n for n in ours._flat_weights_names if n.startswith("weight_hh")]
    masks = {n: torch.empty(getattr(ours, n).shape, dtype=DT).bernoulli_(1 - p) for n in names}
    assert any(float(m.mean()) < 1 for m in masks.values())
    for name, m in masks.items():
        dropped = (getattr(ours, name).detach() * m / (1 - p)).requires_grad_()
        setattr(plain, name, torch.nn.Parameter(dropped))
    expected = plain(x)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)

    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    for name, param in ours.named_parameters():
        theirs = getattr(plain, name).grad
        want = theirs * masks[name] / (1 - p) if name in masks else theirs
        torch.testing.assert_close(param.grad, want, rtol=0, atol=1e-10)

    ours.eval()  # no mask in evaluation
    plain.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x)[0], plain(x)[0], rtol=0, atol=1e-12)


def test_variational_dropout_is_the_plain_layers_on_masked_inputs():
    p = 0.3
    ours, plain = _pair(rnnkit.LayerNormLSTM, 2, False, variational_dropout=p)
    T, N = 6, 4
    x = torch.randn(T, N, 3, dtype=DT)
    torch.manual_seed(7)
    out = ours(x)[0]
    torch.manual_seed(7)
    m0 = torch.empty(N, 3, dtype=DT).bernoulli_(1 - p) / (1 - p)
    m1 = torch.empty(N, H, dtype=DT).bernoulli_(1 - p) / (1 - p)
    assert (m0 == 0).any()
    layers = [rnnkit.LayerNormLSTM(size, H, dtype=DT) for size in (3, H)]
    for j, layer in enumerate(layers):
        for name, param in layer.named_parameters():
            param.data.copy_(getattr(plain, name.replace("_l0", f"_l{j}")))
    expected = layers[1](layers[0](x * m0)[0] * m1)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    ours.eval()
    torch.testing.assert_close(ours(x)[0], plain(x)[0], rtol=0, atol=1e-12)


def _blocks(bias: torch.Tensor) -> torch.Tensor:
    return bias.detach().reshape(-1, H)


@pytest.mark.parametrize("cls", [rnnkit.LayerNormLSTM, rnnkit.LayerNormGRU])
def test_forget_bias_sets_the_forget_gate_slices_and_keeps_the_norms(cls):
    m = cls(3, H, num_layers=2, bidirectional=True, forget_bias=1.5, dtype=DT)
    seen = 0
    for name, p in m.named_parameters():
        if name.startswith("bias_ih"):
            seen += 1
            assert torch.equal(_blocks(p)[1], torch.full((H,), 1.5, dtype=DT))
            assert not torch.equal(_blocks(p)[0], torch.full((H,), 1.5, dtype=DT))
        elif name.startswith("bias_hh"):
            assert torch.equal(_blocks(p)[1], torch.zeros(H, dtype=DT))
        elif name.startswith("layer_norm_"):
            assert torch.equal(p, torch.full_like(p, 0.0 if "_c_bias" in name else 1.0))
    assert seen == 4
    with torch.no_grad():
        m.bias_ih_l0.zero_()
    m.reset_parameters()  # applies the option again
    assert torch.equal(_blocks(m.bias_ih_l0)[1], torch.full((H,), 1.5, dtype=DT))
    assert "forget_bias=1.5" in repr(m)


def test_chrono_init_on_the_layernorm_lstm():
    t_max = 50
    torch.manual_seed(3)
    m = rnnkit.LayerNormLSTM(2, H, chrono_init=t_max, dtype=DT)
    b_ih, b_hh = _blocks(m.bias_ih_l0), _blocks(m.bias_hh_l0)
    forget = b_ih[1]
    assert forget.min() >= 0 and forget.max() <= math.log(t_max - 1)
    assert torch.equal(b_ih[0], -forget)
    assert torch.equal(b_hh[0], torch.zeros(H, dtype=DT))
    assert torch.equal(b_hh[1], torch.zeros(H, dtype=DT))
    # The other gates keep torch.nn's initialisation.
    assert b_ih[2:].abs().max() <= 1 / math.sqrt(H)


def test_bad_variant_options_are_refused():
    with pytest.raises(ValueError, match="weight_drop: expected a probability"):
        rnnkit.LayerNormGRU(3, H, weight_drop=1.0)
    with pytest.raises(ValueError, match="forget_bias and chrono_init both"):
        rnnkit.LayerNormLSTM(3, H, forget_bias=1.0, chrono_init=10)
    with pytest.raises(TypeError, match="unexpected keyword argument 'zoneout_typo'"):
        rnnkit.LayerNormGRU(3, H, zoneout_typo=0.1)
