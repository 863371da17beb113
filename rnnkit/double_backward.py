"""Exact gradients of every order for rnnkit's operators: the backward as a differentiable graph.

The C++ backward operators (``torch.ops.rnnkit.*_backward``) compute first gradients fast but
have no autograd formula of their own. When a backward runs with ``create_graph=True`` (autograd
then runs it in grad mode) and a tensor it reads requires grad, the first gradient must itself
be differentiable: ``rnnkit/ops.py`` then calls :func:`backward` here instead, which recomputes
the operator's forward with differentiable torch operations (the cell functions of
``rnnkit.reference``, one step at a time) and takes ``torch.autograd.grad(..., create_graph=True)``
of it (the padded float LSTM layer has a faster path of its own, rnnkit/lstm_second_order.py,
which comes back here for third derivatives). The gradient that comes back carries a graph
through the recurrent path, the weights, the states and the output gradients, so second (and
higher) derivatives are exact. Without
``create_graph`` the fused C++ backward runs as before. docs/kernels.md gives the cost.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from .reference import (gru_cell, gru_layer, layernorm_gru_layer, layernorm_lstm_layer, lstm_cell,
                        lstm_layer, rnn_cell, rnn_layer)


def wanted(grads: Sequence[Optional[Tensor]], saved: Sequence[Optional[Tensor]]) -> bool:
    """Whether a backward must build a graph of its result: autograd runs backward in grad mode
    only under create_graph=True, and the graph is needed only when a tensor read requires grad."""
    return torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (*grads, *saved))


def refuse_forward_ad(op: str, *tensors: Optional[Tensor]) -> None:
    """Raises if a tensor carries a forward-mode tangent (torch.func.jvp, forward_ad).
    The operators have no forward-mode formula, and torch would drop the tangent silently: the
    autograd kernel of a torch.library operator runs it without autograd when no input requires
    grad."""
    if forward_ad._current_level < 0:  # no dual level open: the common case costs one compare
        return
    if any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise RuntimeError(
            f"rnnkit::{op} has no forward-mode derivative (torch.func.jvp, jacfwd, "
            "torch.autograd.forward_ad): an input carries a tangent. Use reverse mode "
            "(torch.autograd.grad or backward, exact at every order), or torch.nn's module.")


def _zoneout(mask: Optional[Tensor], p: float):
    """One state's zoneout as the reference layers take it: the mask, else the probability."""
    return mask if mask is not None else p


def _lstm(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train=True,
          zoneout_h=None, zoneout_h_p=0.0, zoneout_c=None, zoneout_c_p=0.0):
    out, (h, c) = lstm_layer(input, batch_sizes, (h0, c0), (w_ih, w_hh, b_ih, b_hh, w_hr), reverse,
                             (_zoneout(zoneout_h, zoneout_h_p), _zoneout(zoneout_c, zoneout_c_p)))
    return out, h, c


def _gru(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse, train=True, zoneout_h=None,
         zoneout_h_p=0.0):
    out, (h,) = gru_layer(input, batch_sizes, (h0,), (w_ih, w_hh, b_ih, b_hh, None), reverse,
                          (_zoneout(zoneout_h, zoneout_h_p),))
    return out, h


def _rnn(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse, zoneout_h=None,
         zoneout_h_p=0.0):
    out, (h,) = rnn_layer(nonlinearity)(input, batch_sizes, (h0,), (w_ih, w_hh, b_ih, b_hh, None),
                                        reverse, (_zoneout(zoneout_h, zoneout_h_p),))
    return out, h


def _layernorm_lstm(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, norm, reverse, train=True,
                    zoneout_h=None, zoneout_h_p=0.0, zoneout_c=None, zoneout_c_p=0.0):
    H = c0.shape[-1]
    gains = norm.split([4 * H, 4 * H, H, H])  # γ_x, γ_h, γ_c, β_c (layernorm_ops.py)
    out, (h, c) = layernorm_lstm_layer(
        input, batch_sizes, (h0, c0), (w_ih, w_hh, b_ih, b_hh, gains), reverse,
        (_zoneout(zoneout_h, zoneout_h_p), _zoneout(zoneout_c, zoneout_c_p)))
    return out, h, c


def _layernorm_gru(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, norm, reverse, train=True,
                   zoneout_h=None, zoneout_h_p=0.0, zoneout_c=None, zoneout_c_p=0.0):
    H = h0.shape[-1]
    out, (h,) = layernorm_gru_layer(input, batch_sizes, (h0,),
                                    (w_ih, w_hh, b_ih, b_hh, norm.split([3 * H, 3 * H])), reverse,
                                    (_zoneout(zoneout_h, zoneout_h_p),))
    return out, h


#: Operator name -> its forward in differentiable torch operations: the operator's arguments in
#: schema order -> its differentiable outputs in order (the workspace, never differentiated, left
#: out).
FORWARDS: dict[str, Callable[..., tuple[Tensor, ...]]] = {
    "lstm": _lstm,
    "gru": _gru,
    "rnn": _rnn,
    "layernorm_lstm": _layernorm_lstm,
    "layernorm_gru": _layernorm_gru,
    "lstm_cell": lstm_cell,
    "gru_cell": lambda *args: (gru_cell(*args),),
    "rnn_cell": lambda *args: (rnn_cell(*args),),
}


def backward(op: str, needs_input_grad: Sequence[bool], grads: Sequence[Optional[Tensor]],
             args: Sequence) -> tuple[Optional[Tensor], ...]:
    """The gradients of rnnkit::op's arguments, differentiable (a graph is built).

    op: a key of FORWARDS; args: the operator's arguments in schema order (as the forward got
    them); grads: the gradients of its differentiable outputs, in order (None for an output the
    loss does not reach); needs_input_grad: ctx.needs_input_grad. Returns one entry per argument:
    its gradient, or None where none is needed (or the output does not depend on it).
    """
    # needs_input_grad is shorter than args when a defaulted argument (train) was not passed.
    wrt = [i for i, a in enumerate(args) if i < len(needs_input_grad) and needs_input_grad[i]
           and isinstance(a, Tensor) and a.requires_grad]
    result: list[Optional[Tensor]] = [None] * len(args)
    pairs = [(k, g) for k, g in enumerate(grads) if g is not None]
    if not wrt or not pairs:
        return tuple(result)
    with torch.enable_grad():
        # A fresh alias per differentiated argument: the gradient taken is the one that reaches
        # this argument directly, not also through another argument computed from it (h0 = f(x)),
        # which the outer backward adds itself.
        local = [a.view_as(a) if i in wrt else a for i, a in enumerate(args)]
        outputs = FORWARDS[op](*local)
        got = torch.autograd.grad([outputs[k] for k, _ in pairs], [local[i] for i in wrt],
                                  [g for _, g in pairs], create_graph=True, allow_unused=True)
    for i, g in zip(wrt, got):
        result[i] = g
    return tuple(result)
