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
Layer-normalised LSTM and GRU (haste's LayerNormLSTM / LayerNormGRU, Ba et al. 2016), with
LN(v; γ, β) = γ ⊙ (v - mean(v)) / sqrt(var(v) + 1e-5) + β over the whole row (all gates at once):
    LSTM: a = LN(W_ih x; γ_x) + LN(W_hh h; γ_h) + b_ih + b_hh, gates as above,
          c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh(LN(c'; γ_c, β_c))
    GRU:  x_ = LN(W_ih x; γ_x) + b_ih,  h_ = LN(W_hh h; γ_h) + b_hh, then the GRU on x_ and h_
Zoneout (Krueger et al. 2016) of each state s (h, and c for the LSTM) after the cell's step:
    s' = m ⊙ s + (1 − m) ⊙ s~     m: a mask of zeros and ones (training) or the probability p
                                   (evaluation, the expectation); the layer outputs the mixed h

It imports torch only, and stacks its layers and handles its inputs (padded, packed, batch-first,
unbatched) on its own, so that what it judges (rnnkit.functional, rnnkit.nn) shares none of its
code; tests/test_architecture.py holds it to that.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from torch.nn.utils.rnn import PackedSequence

#: One layer-direction's parameters: (w_ih, w_hh, b_ih, b_hh, w_hr), None where absent.
LayerParams = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]


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


def layer_norm(v: Tensor, gain: Tensor, shift: Optional[Tensor] = None,
               eps: float = 1e-5) -> Tensor:
    """γ ⊙ (v - mean) / sqrt(var + eps) + β over the last dimension (biased variance)."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    y = (v - mean) / torch.sqrt(var + eps) * gain
    return y if shift is None else y + shift


def _plus(v: Tensor, *biases: Optional[Tensor]) -> Tensor:
    for b in biases:
        if b is not None:
            v = v + b
    return v


def layernorm_lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                        norm: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """x: (N, I), h, c: (N, H); norm = (γ_x (4H), γ_h (4H), γ_c (H), β_c (H)) -> h', c'."""
    gain_x, gain_h, gain_c, shift_c = norm
    a = _plus(layer_norm(x @ w_ih.t(), gain_x) + layer_norm(h @ w_hh.t(), gain_h), b_ih, b_hh)
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c_next = f * c + i * g
    return o * torch.tanh(layer_norm(c_next, gain_c, shift_c)), c_next


def layernorm_gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                       b_hh: Optional[Tensor], norm: tuple[Tensor, Tensor]) -> Tensor:
    """x: (N, I), h: (N, H); norm = (γ_x (3H), γ_h (3H)) -> h'."""
    gain_x, gain_h = norm
    x_r, x_z, x_n = _plus(layer_norm(x @ w_ih.t(), gain_x), b_ih).chunk(3, dim=1)
    h_r, h_z, h_n = _plus(layer_norm(h @ w_hh.t(), gain_h), b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


# ---- one layer in one direction, by a loop over time ------------------------------------------
def run_layer(step, x: Tensor, batch_sizes: Optional[Tensor], states: tuple[Tensor, ...],
               reverse: bool, zoneout: Sequence = ()) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Loops step(x_t, states_t) -> new states (h first) over time.

    Padded x: (T, N, I). Packed x: (P, I) with batch_sizes (T,): step t sees the first
    batch_sizes[t] sequences, and a sequence's final state is the state after its last step.
    zoneout: per state (h first), a mask (T, N, F), a probability, or None: each new state is
    mixed with the old one, m ⊙ s + (1 − m) ⊙ s~ (mask rows past batch_sizes[t] unused).
    """
    if batch_sizes is None:
        inputs = list(x.unbind(0))
    else:
        inputs = list(x.split([int(b) for b in batch_sizes]))
    outputs: list[Optional[Tensor]] = [None] * len(inputs)
    order = range(len(inputs) - 1, -1, -1) if reverse else range(len(inputs))
    for t in order:
        n = inputs[t].shape[0]
        old = tuple(s[:n] for s in states)
        new = step(inputs[t], old)
        new = tuple(_zoneout(z, t, n, s_old, s_new)
                    for z, s_old, s_new in zip(list(zoneout) + [None] * len(new), old, new))
        states = tuple(torch.cat([a, s[n:]], 0) for a, s in zip(new, states))
        outputs[t] = new[0]
    if not outputs:
        width = states[0].shape[-1]
        shape = (0, x.shape[1], width) if batch_sizes is None else (0, width)
        return x.new_zeros(shape), states
    output = torch.stack(outputs, 0) if batch_sizes is None else torch.cat(outputs, 0)
    return output, states


def _zoneout(z, t: int, n: int, old: Tensor, new: Tensor) -> Tensor:
    """One state's zoneout at step t over its first n rows: z a mask (T, N, F), p, or None."""
    if z is None or (not isinstance(z, Tensor) and z == 0):
        return new
    m = z[t, :n] if isinstance(z, Tensor) else z
    return m * old + (1 - m) * new


def lstm_layer(x, batch_sizes, states, params: LayerParams, reverse: bool, zoneout: Sequence = ()):
    w_ih, w_hh, b_ih, b_hh, w_hr = params
    return run_layer(lambda xt, s: lstm_cell(xt, s[0], s[1], w_ih, w_hh, b_ih, b_hh, w_hr),
                     x, batch_sizes, states, reverse, zoneout)


def gru_layer(x, batch_sizes, states, params: LayerParams, reverse: bool, zoneout: Sequence = ()):
    w_ih, w_hh, b_ih, b_hh, _ = params
    return run_layer(lambda xt, s: (gru_cell(xt, s[0], w_ih, w_hh, b_ih, b_hh),),
                     x, batch_sizes, states, reverse, zoneout)


def rnn_layer(nonlinearity: str):
    def layer(x, batch_sizes, states, params: LayerParams, reverse: bool, zoneout: Sequence = ()):
        w_ih, w_hh, b_ih, b_hh, _ = params
        return run_layer(
            lambda xt, s: (rnn_cell(xt, s[0], w_ih, w_hh, b_ih, b_hh, nonlinearity),),
            x, batch_sizes, states, reverse, zoneout)

    return layer


def layernorm_lstm_layer(x, batch_sizes, states, params, reverse: bool, zoneout: Sequence = ()):
    """params: (w_ih, w_hh, b_ih, b_hh, norm), norm as layernorm_lstm_cell's; zoneout as
    run_layer's (h, c)."""
    w_ih, w_hh, b_ih, b_hh, norm = params
    return run_layer(
        lambda xt, s: layernorm_lstm_cell(xt, s[0], s[1], w_ih, w_hh, b_ih, b_hh, norm),
        x, batch_sizes, states, reverse, zoneout)


def layernorm_gru_layer(x, batch_sizes, states, params, reverse: bool, zoneout: Sequence = ()):
    """params: (w_ih, w_hh, b_ih, b_hh, norm), norm as layernorm_gru_cell's; zoneout as
    run_layer's (h)."""
    w_ih, w_hh, b_ih, b_hh, norm = params
    return run_layer(lambda xt, s: (layernorm_gru_cell(xt, s[0], w_ih, w_hh, b_ih, b_hh, norm),),
                     x, batch_sizes, states, reverse, zoneout)


# ---- stacks of layers -------------------------------------------------------------------------
def _draw_zoneout(x: Tensor, batch_sizes: Optional[Tensor], states: tuple[Tensor, ...],
                  probs: Sequence[float], training: bool) -> list:
    """One layer-direction's zoneout per state: in training a mask (T, N, F) per state with p > 0,
    torch.empty(T, N, F).bernoulli_(p) in x's dtype, h's before c's; else the probabilities."""
    if not training:
        return list(probs)
    T = x.shape[0] if batch_sizes is None else len(batch_sizes)
    N = states[0].shape[0]
    return [x.new_empty((T, N, s.shape[-1])).bernoulli_(p) if p > 0 else None
            for s, p in zip(states, probs)]


def stack_layers(layer, input: Tensor, batch_sizes: Optional[Tensor], states, params,
                 num_layers: int, bidirectional: bool, dropout: float, training: bool,
                 zoneout: Sequence[float] = ()):
    """Runs num_layers layers, each in one or two directions, time-major.

    input: (T, N, I), or packed (P, I) with batch_sizes (T,); states: one (L*D, N, *) tensor per
    state kind (h, then c for the LSTM), rows layer by layer, forward before reverse; params: L*D
    LayerParams in the same order. Layer l + 1 reads both directions of layer l side by side;
    dropout acts on every layer's output but the last's, in training only; zoneout: a probability
    per state kind (h, then c), drawn per layer and direction by _draw_zoneout. Returns the last
    layer's output, (T, N, D*R) or (P, D*R), and the final states, one (L*D, N, *) per kind.
    """
    directions = 2 if bidirectional else 1
    finals: list[list[Tensor]] = [[] for _ in states]
    x = input
    for index in range(num_layers):
        outputs = []
        for direction in range(directions):
            row = index * directions + direction
            layer_states = tuple(s[row] for s in states)
            if any(p > 0 for p in zoneout):
                z = _draw_zoneout(x, batch_sizes, layer_states, zoneout, training)
                out, final = layer(x, batch_sizes, layer_states, params[row], direction == 1, z)
            else:
                out, final = layer(x, batch_sizes, layer_states, params[row], direction == 1)
            outputs.append(out)
            for kind, state in enumerate(final):
                finals[kind].append(state)
        x = torch.cat(outputs, dim=-1)
        if training and dropout > 0 and index < num_layers - 1:
            x = torch.nn.functional.dropout(x, p=dropout, training=True)
    return x, [torch.stack(f, 0) for f in finals]


def lstm(input, hx, params, num_layers=1, bidirectional=False, dropout=0.0, training=False,
         batch_sizes=None, zoneout=0.0, zoneout_cell=None):
    """Same arguments and results as rnnkit.functional.lstm."""
    probs = (zoneout, zoneout if zoneout_cell is None else zoneout_cell)
    out, (h, c) = stack_layers(lstm_layer, input, batch_sizes, hx, params, num_layers,
                               bidirectional, dropout, training, probs)
    return out, (h, c)


def gru(input, hx, params, num_layers=1, bidirectional=False, dropout=0.0, training=False,
        batch_sizes=None, zoneout=0.0):
    """Same arguments and results as rnnkit.functional.gru."""
    out, (h,) = stack_layers(gru_layer, input, batch_sizes, (hx,), params, num_layers,
                             bidirectional, dropout, training, (zoneout,))
    return out, h


def rnn(input, hx, params, num_layers=1, bidirectional=False, dropout=0.0, training=False,
        batch_sizes=None, nonlinearity="tanh", zoneout=0.0):
    """Same arguments and results as rnnkit.functional.rnn."""
    out, (h,) = stack_layers(rnn_layer(nonlinearity), input, batch_sizes, (hx,), params,
                             num_layers, bidirectional, dropout, training, (zoneout,))
    return out, h


def layernorm_lstm(input, hx, params, num_layers=1, bidirectional=False, dropout=0.0,
                   training=False, batch_sizes=None, zoneout=0.0, zoneout_cell=None):
    """Same arguments and results as rnnkit.layernorm_functional.layernorm_lstm."""
    probs = (zoneout, zoneout if zoneout_cell is None else zoneout_cell)
    out, (h, c) = stack_layers(layernorm_lstm_layer, input, batch_sizes, hx, params, num_layers,
                               bidirectional, dropout, training, probs)
    return out, (h, c)


def layernorm_gru(input, hx, params, num_layers=1, bidirectional=False, dropout=0.0,
                  training=False, batch_sizes=None, zoneout=0.0):
    """Same arguments and results as rnnkit.layernorm_functional.layernorm_gru."""
    out, (h,) = stack_layers(layernorm_gru_layer, input, batch_sizes, (hx,), params, num_layers,
                             bidirectional, dropout, training, (zoneout,))
    return out, h


# ---- modules ------------------------------------------------------------------------------------
class _Reference:
    """Mixin over torch.nn.RNN / LSTM / GRU: torch.nn's constructor, parameters (names, shapes,
    initialisation) and state dicts, with the forward computed by the loops above.

    Input handling is its own: input (T, N, I), or (N, T, I) if batch_first, or unbatched (T, I),
    or a PackedSequence; hx as torch.nn's (zeros when None). Returns torch.nn's results.
    """

    def _reference_layer(self):
        raise NotImplementedError

    def _params(self) -> list[LayerParams]:
        get = lambda name: getattr(self, name, None)  # noqa: E731
        out = []
        for index in range(self.num_layers):
            for suffix in ("", "_reverse")[:2 if self.bidirectional else 1]:
                out.append(tuple(get(f"{base}_l{index}{suffix}") for base in
                                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")))
        return out

    def _state_sizes(self) -> list[int]:
        return [self.proj_size or self.hidden_size]

    def _forward(self, input, hx: Optional[tuple[Tensor, ...]]):
        packed = isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            batch, batched = (int(batch_sizes[0]) if len(batch_sizes) else 0), True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"reference {type(self).__name__}: expected a 2-D (unbatched) "
                                 f"or 3-D input, got {input.dim()}-D")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            batch_sizes = sorted_indices = unsorted_indices = None
            batch = x.shape[1]
        rows = self.num_layers * (2 if self.bidirectional else 1)
        states = []
        for i, size in enumerate(self._state_sizes()):
            s = None if hx is None else hx[i]
            if s is None:
                s = x.new_zeros((rows, batch, size))
            elif not batched:
                s = s.unsqueeze(1)
            elif sorted_indices is not None:  # hx is in the caller's order, the data sorted
                s = s.index_select(1, sorted_indices)
            states.append(s)
        out, finals = stack_layers(self._reference_layer(), x, batch_sizes, states,
                                   self._params(), self.num_layers, self.bidirectional,
                                   float(self.dropout), self.training)
        if packed:
            if unsorted_indices is not None:
                finals = [f.index_select(1, unsorted_indices) for f in finals]
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), finals
        if not batched:
            return out.squeeze(1), [f.squeeze(1) for f in finals]
        return (out.transpose(0, 1) if self.batch_first else out), finals


class RNN(_Reference, torch.nn.RNN):
    """torch.nn.RNN's interface (tanh or relu), computed by the reference loop."""

    def _reference_layer(self):
        return rnn_layer(self.nonlinearity)

    def forward(self, input, hx: Optional[Tensor] = None):
        out, (h,) = self._forward(input, (hx,))
        return out, h


class LSTM(_Reference, torch.nn.LSTM):
    """torch.nn.LSTM's interface (proj_size included), computed by the reference loop."""

    def _reference_layer(self):
        return lstm_layer

    def _state_sizes(self) -> list[int]:
        return [self.proj_size or self.hidden_size, self.hidden_size]

    def forward(self, input, hx: Optional[tuple[Tensor, Tensor]] = None):
        out, (h, c) = self._forward(input, hx)
        return out, (h, c)


class GRU(_Reference, torch.nn.GRU):
    """torch.nn.GRU's interface, computed by the reference loop."""

    def _reference_layer(self):
        return gru_layer

    def forward(self, input, hx: Optional[Tensor] = None):
        out, (h,) = self._forward(input, (hx,))
        return out, h
