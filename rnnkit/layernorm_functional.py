"""Functional forms of the layer-normalised LSTM and GRU (haste's LayerNormLSTM/LayerNormGRU),
on ``torch.ops.rnnkit.layernorm_lstm`` and ``layernorm_gru``. Conventions as rnnkit.functional:
layers take a whole sequence, time first, (T, N, I) padded or (P, I) packed with batch_sizes.

A layer-direction's parameters are ``(w_ih, w_hh, b_ih, b_hh, norm)``: torch.nn's four (biases
None when absent) and ``norm``, a tuple of the layer-norm parameters,
    LSTM: (gamma_x (4H), gamma_h (4H), gamma_c (H), beta_c (H))
    GRU:  (gamma_x (3H), gamma_h (3H))
The equations are rnnkit.reference's (layernorm_lstm_cell, layernorm_gru_cell).

Zoneout (``zoneout``, and ``zoneout_cell`` for the LSTM's c) is rnnkit.functional's: the same
masks, drawn in the same order, mixed inside the fused time loop after the cell's step (the
normalisation of c acts on the candidate c~, the state the next step reads is the mixed one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import double_backward as _exact
from . import layernorm_ops as _layernorm_ops  # noqa: F401  (autograd and fake registrations)
from .functional import Zoneout, _zoneout_args, stack_layers, zoneout_probs

rnnkit_ops = torch.ops.rnnkit

#: One layer-direction's parameters: (w_ih, w_hh, b_ih, b_hh, norm).
NormLayerParams = tuple[Tensor, Tensor, Tensor | None, Tensor | None, tuple[Tensor, ...]]


def _needs_workspace(*tensors: Tensor | None) -> bool:
    """Whether autograd will need the layer's backward: only then is its workspace kept."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def layernorm_lstm_layer(x: Tensor, batch_sizes: Tensor | None, states: tuple[Tensor, ...],
                         params: NormLayerParams, reverse: bool, zoneout: Zoneout = ()):
    """One layer, one direction. x: (T, N, I) or (P, I); states (h0, c0), each (N, H);
    zoneout: rnnkit.functional's Zoneout entries (h, c). Returns output (T, N, H) or (P, H) and
    (h_n, c_n)."""
    w_ih, w_hh, b_ih, b_hh, norm = params
    _exact.refuse_forward_ad("layernorm_lstm", x, *states, w_ih, w_hh, b_ih, b_hh, *norm)
    train = _needs_workspace(x, *states, w_ih, w_hh, b_ih, b_hh, *norm)
    out, h, c, _ = rnnkit_ops.layernorm_lstm(x, batch_sizes, states[0], states[1], w_ih, w_hh,
                                             b_ih, b_hh, torch.cat(norm), reverse, train,
                                             *_zoneout_args(zoneout, 2))
    return out, (h, c)


def layernorm_gru_layer(x: Tensor, batch_sizes: Tensor | None, states: tuple[Tensor, ...],
                        params: NormLayerParams, reverse: bool, zoneout: Zoneout = ()):
    """One layer, one direction. x: (T, N, I) or (P, I); states (h0,), (N, H); zoneout:
    rnnkit.functional's Zoneout entries (h). Returns output (T, N, H) or (P, H) and (h_n,)."""
    w_ih, w_hh, b_ih, b_hh, norm = params
    _exact.refuse_forward_ad("layernorm_gru", x, *states, w_ih, w_hh, b_ih, b_hh, *norm)
    train = _needs_workspace(x, *states, w_ih, w_hh, b_ih, b_hh, *norm)
    out, h, _, _ = rnnkit_ops.layernorm_gru(x, batch_sizes, states[0], None, w_ih, w_hh, b_ih,
                                            b_hh, torch.cat(norm), reverse, train,
                                            *_zoneout_args(zoneout, 1))
    return out, (h,)


def layernorm_lstm(input: Tensor, hx: tuple[Tensor, Tensor], params: Sequence[NormLayerParams],
                   num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                   training: bool = False, batch_sizes: Tensor | None = None,
                   zoneout: float = 0.0, zoneout_cell: float | None = None):
    """A stack of layer-normalised LSTM layers. input: (T, N, I), or (P, I) with batch_sizes;
    hx: (h0, c0), each (L*D, N, H). Returns output (T, N, D*H) or (P, D*H) and (h_n, c_n).
    zoneout: the probability for h, zoneout_cell for c (None: zoneout's), as
    rnnkit.functional.lstm."""
    probs = zoneout_probs("layernorm_lstm", zoneout, zoneout_cell, cell_state=True)
    out, (h, c) = stack_layers(layernorm_lstm_layer, input, batch_sizes, hx, params, num_layers,
                               bidirectional, dropout, training, probs)
    return out, (h, c)


def layernorm_gru(input: Tensor, hx: Tensor, params: Sequence[NormLayerParams],
                  num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                  training: bool = False, batch_sizes: Tensor | None = None,
                  zoneout: float = 0.0):
    """A stack of layer-normalised GRU layers. input: (T, N, I), or (P, I) with batch_sizes;
    hx: (L*D, N, H). Returns output (T, N, D*H) or (P, D*H) and h_n (L*D, N, H). zoneout: the
    probability for h."""
    out, (h,) = stack_layers(layernorm_gru_layer, input, batch_sizes, (hx,), params, num_layers,
                             bidirectional, dropout, training,
                             zoneout_probs("layernorm_gru", zoneout))
    return out, h


def layernorm_lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor,
                        b_ih: Tensor | None, b_hh: Tensor | None,
                        norm: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """One step. input: (N, I); hx: (h, c), each (N, H). Returns (h', c'), each (N, H)."""
    _, (h, c) = layernorm_lstm_layer(input.unsqueeze(0), None, hx, (w_ih, w_hh, b_ih, b_hh, norm),
                                     False)
    return h, c


def layernorm_gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                       b_ih: Tensor | None, b_hh: Tensor | None,
                       norm: tuple[Tensor, ...]) -> Tensor:
    """One step. input: (N, I); hx: (N, H). Returns h': (N, H)."""
    _, (h,) = layernorm_gru_layer(input.unsqueeze(0), None, (hx,), (w_ih, w_hh, b_ih, b_hh, norm),
                                  False)
    return h
