"""Autograd and fake (meta) implementations of the layer-normalised operators,
``torch.ops.rnnkit.layernorm_lstm`` and ``torch.ops.rnnkit.layernorm_gru`` (csrc/common/cells/
layernorm_*.h, signatures in csrc/common/norm_operators.h), in the style of rnnkit/ops.py.

Both take the cell's norm parameters as one vector ``norm``: (10H,) for the LSTM, [gamma_x (4H) |
gamma_h (4H) | gamma_c (H) | beta_c (H)]; (6H,) for the GRU, [gamma_x (3H) | gamma_h (3H)]. The
GRU takes ``c0=None`` and returns an empty ``c_n``, (0,). Both take, and their backward gets
from the forward, the zoneout arguments of rnnkit/ops.py's operators last (zoneout_h, zoneout_h_p,
zoneout_c, zoneout_c_p: a mask, or else a probability); the GRU's c ones stay None and 0.

Double backward (create_graph=True through these operators) recomputes the layer through
rnnkit.reference in rnnkit/double_backward.py, as for the plain operators: exact at every order.
"""

from __future__ import annotations

import torch

from . import double_backward as _exact
from . import ops as _ops  # the fake helpers and the plain operators' registrations

ops = torch.ops.rnnkit

#: The layer-normalised operators (each with a ``_backward``).
OPERATORS = ("layernorm_lstm", "layernorm_gru")


def _layer_fake(cell: str):
    def fake(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, norm, reverse, train=True,
             zoneout_h=None, zoneout_h_p=0.0, zoneout_c=None, zoneout_c_p=0.0):
        H = h0.shape[-1]
        ws = _ops._workspace(input, batch_sizes, _ops._width(cell, H), train)
        c_n = torch.empty_like(c0) if c0 is not None else input.new_empty((0,))
        return _ops._out(input, H), torch.empty_like(h0), c_n, ws

    return fake


def _backward_fake(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, norm,
                   output, workspace, reverse, zoneout_h=None, zoneout_h_p=0.0, zoneout_c=None,
                   zoneout_c_p=0.0):
    G = w_ih.shape[0]
    grad_c0 = torch.empty_like(c0) if c0 is not None else input.new_empty((0,))
    return (torch.empty_like(input), torch.empty_like(h0), grad_c0, torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_ih.new_empty((G,)), w_ih.new_empty((G,)),
            torch.empty_like(norm))


def _setup(op: str):
    def setup(ctx, inputs, output):
        a = _ops._named(getattr(ops, op).default, inputs)
        ctx.train = a.get("train", True)
        # The GRU's c_n is an empty placeholder: no gradient can reach it.
        _ops._unused_grads_none(ctx, output[3], *(() if a["c0"] is not None else (output[2],)))
        _ops._setup_biases(ctx, a)
        ctx.reverse = a["reverse"]
        ctx.zoneout_p = (a.get("zoneout_h_p", 0.0), a.get("zoneout_c_p", 0.0))
        ctx.save_for_backward(a["input"], a["batch_sizes"], a["h0"], a["c0"], a["w_ih"],
                              a["w_hh"], a["norm"], output[0], output[3], a.get("zoneout_h"),
                              a.get("zoneout_c"), a["b_ih"], a["b_hh"])

    return setup


def _backward(op: str):
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_workspace):
        _ops._require_train(op, ctx)
        (input, batch_sizes, h0, c0, w_ih, w_hh, norm, output, workspace, zoneout_h,
         zoneout_c, b_ih, b_hh) = ctx.saved_tensors
        zoneout = (zoneout_h, ctx.zoneout_p[0], zoneout_c, ctx.zoneout_p[1])
        # The GRU's c_n is an empty placeholder, and not among its exact forward's outputs.
        grads = (grad_output, grad_h_n) if c0 is None else (grad_output, grad_h_n, grad_c_n)
        args = (input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, norm, ctx.reverse, True,
                *zoneout)
        if _exact.wanted(grads, args):
            return _exact.backward(op, ctx.needs_input_grad, grads, args)
        if c0 is None:
            grad_c_n = None
        g = getattr(ops, f"{op}_backward")(grad_output, grad_h_n, grad_c_n, input, batch_sizes,
                                           h0, c0, w_ih, w_hh, norm, output, workspace,
                                           ctx.reverse, *zoneout)
        grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_norm = g
        grad_b_ih, grad_b_hh = _ops._bias_grads(ctx, grad_b_ih, grad_b_hh)
        return _ops._input_grads(getattr(ops, op).default, input=grad_input, h0=grad_h0,
                                 c0=grad_c0 if c0 is not None else None, w_ih=grad_w_ih,
                                 w_hh=grad_w_hh, b_ih=grad_b_ih, b_hh=grad_b_hh, norm=grad_norm)

    return backward


for _op in OPERATORS:
    _ops._fake(_op)(_layer_fake(_op))
    _ops._fake(f"{_op}_backward")(_backward_fake)
    torch.library.register_autograd(f"rnnkit::{_op}", _backward(_op), setup_context=_setup(_op))
