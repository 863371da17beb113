"""Plain PyTorch, written straight from the cell equations: the oracle of rnnkit's tests and a
baseline in rnnkit bench. No fusion and a Python loop over time: slow, and plainly right.

LSTM (gate order i, f, g, o as in torch.nn):
    i = σ(W_ii x + b_ii + W_hi h + b_hi)      f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f ⊙ c + i ⊙ g                         h' = o ⊙ tanh(c')   (then h' = W_hr h' with proj_size)
GRU (gate order r, z, n):
    r = σ(W_ir x + b_ir + W_hr h + b_hr)      z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))                   h' = (1 - z) ⊙ n + z ⊙ h
Elman RNN:
    h' = act(W_ih x + b_ih + W_hh h + b_hh),  act = tanh or relu
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .functional import LayerParams, stack_layers


def _affine(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    y = x @ w.t()
    return y if b is None else y + b


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
              w_hr: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """x: (N, I), h: (N, R), c: (N, H) -> h' (N, R), c' (N, H)."""
    a_i, a_f, a_g, a_o = (_affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)).chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)
    if w_hr is not None:
        h_next = h_next @ w_hr.t()
    return h_next, c_next


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None) -> Tensor:
    """x: (N, I), h: (N, H) -> h' (N, H)."""
    x_r, x_z, x_n = _affine(x, w_ih, b_ih).chunk(3, dim=1)
    h_r, h_z, h_n = _affine(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, nonlinearity: str = "tanh") -> Tensor:
    """x: (N, I), h: (N, H) -> h' (N, H)."""
    a = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    if nonlinearity == "tanh":
        return torch.tanh(a)
    if nonlinearity == "relu":
        return torch.relu(a)
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


# ---- one layer in one direction, by a loop over time ------------------------------------------
def _run_layer(step, x: Tensor, batch_sizes: Optional[Tensor], states: tuple[Tensor, ...],
               reverse: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Loops step(x_t, states_t) -> new states (h first) over time.

    Padded x: (T, N, I). Packed x: (P, I) with batch_sizes (T,): step t sees the first
    batch_sizes[t] sequences, and a sequence's final state is the state after its last step.
    """
    if batch_sizes is None:
        inputs = list(x.unbind(0))
    else:
        inputs = list(x.split([int(b) for b in batch_sizes]))
    outputs: list[Optional[Tensor]] = [None] * len(inputs)
    order = range(len(inputs) - 1, -1, -1) if reverse else range(len(inputs))
    for t in order:
        n = inputs[t].shape[0]
        new = step(inputs[t], tuple(s[:n] for s in states))
        states = tuple(torch.cat([a, s[n:]], 0) for a, s in zip(new, states))
        outputs[t] = new[0]
    if not outputs:
        width = states[0].shape[-1]
        shape = (0, x.shape[1], width) if batch_sizes is None else (0, width)
        return x.new_zeros(shape), states
    output = torch.stack(outputs, 0) if batch_sizes is None else torch.cat(outputs, 0)
    return output, states


def lstm_layer(x, batch_sizes, states, params: LayerParams, reverse: bool):
    w_ih, w_hh, b_ih, b_hh, w_hr = params
    return _run_layer(lambda xt, s: lstm_cell(xt, s[0], s[1], w_ih, w_hh, b_ih, b_hh, w_hr),
                      x, batch_sizes, states, reverse)


def gru_layer(x, batch_sizes, states, params: LayerParams, reverse: bool):
    w_ih, w_hh, b_ih, b_hh, _ = params
    return _run_layer(lambda xt, s: (gru_cell(xt, s[0], w_ih, w_hh, b_ih, b_hh),),
                      x, batch_sizes, states, reverse)


def rnn_layer(nonlinearity: str):
    def layer(x, batch_sizes, states, params: LayerParams, reverse: bool):
        w_ih, w_hh, b_ih, b_hh, _ = params
        return _run_layer(
            lambda xt, s: (rnn_cell(xt, s[0], w_ih, w_hh, b_ih, b_hh, nonlinearity),),
            x, batch_sizes, states, reverse)

    return layer


def lstm(input, hx, params, num_layers=1, bidirectional=False, dropout=0.0, training=False,
         batch_sizes=None):
    """Same arguments and results as rnnkit.functional.lstm."""
    out, (h, c) = stack_layers(lstm_layer, input, batch_sizes, hx, params, num_layers,
                               bidirectional, dropout, training)
    return out, (h, c)


def gru(input, hx, params, num_layers=1, bidirectional=False, dropout=0.0, training=False,
        batch_sizes=None):
    """Same arguments and results as rnnkit.functional.gru."""
    out, (h,) = stack_layers(gru_layer, input, batch_sizes, (hx,), params, num_layers,
                             bidirectional, dropout, training)
    return out, h


def rnn(input, hx, params, num_layers=1, bidirectional=False, dropout=0.0, training=False,
        batch_sizes=None, nonlinearity="tanh"):
    """Same arguments and results as rnnkit.functional.rnn."""
    out, (h,) = stack_layers(rnn_layer(nonlinearity), input, batch_sizes, (hx,), params,
                             num_layers, bidirectional, dropout, training)
    return out, h


# ---- modules: rnnkit's layers with the plain-PyTorch loop underneath ----------------------------
def _reference_layers():
    from . import nn as rnn

    class _Reference:
        """Mixin: run each layer with rnnkit.reference instead of the fused kernels."""

        def _layer(self):
            return {"LSTM": lstm_layer, "GRU": gru_layer, "RNN_TANH": rnn_layer("tanh"),
                    "RNN_RELU": rnn_layer("relu")}[self.mode]

    return (type("RNN", (_Reference, rnn.RNN), {"__doc__": "rnnkit.RNN on the reference loop."}),
            type("LSTM", (_Reference, rnn.LSTM), {"__doc__": "rnnkit.LSTM on the reference loop."}),
            type("GRU", (_Reference, rnn.GRU), {"__doc__": "rnnkit.GRU on the reference loop."}))


#: Same constructor, parameters, state dicts and results as rnnkit.RNN / LSTM / GRU, computed by
#: the Python loop above (for tests, and for --impl reference in rnnkit train).
RNN, LSTM, GRU = _reference_layers()
