"""Functional forms of rnnkit's fused cells and layers, on torch.ops.rnnkit.

Cells take one time step: input (N, H_in) and state (N, H) tensors. Layers take a whole
sequence, time first: input (T, N, H_in) padded, or (P, H_in) packed with ``batch_sizes`` (T,)
as in ``torch.nn.utils.rnn.PackedSequence``. Layer parameters are one tuple per layer and
direction, ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` with ``None`` for absent biases or projection,
listed layer by layer, forward direction before reverse (torch.nn's order).

Zoneout (``zoneout``, and ``zoneout_cell`` for the LSTM's c): in training each layer and
direction draws a mask per state, ``torch.empty(T, N, F).bernoulli_(p)`` in the input's dtype and
on its device (layer by layer, forward before reverse, h before c), and the kernels mix
``s_t = m ⊙ s_{t-1} + (1 − m) ⊙ s~_t``; out of training they mix with the expectation,
``p s_{t-1} + (1 − p) s~_t``, and draw nothing. The layer's output is the mixed h.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import double_backward as _exact
from . import dropout as _dropout
from . import ops as _ops  # noqa: F401  (registers autograd and fake implementations)

rnnkit_ops = torch.ops.rnnkit

#: One layer-direction's parameters: (w_ih, w_hh, b_ih, b_hh, w_hr).
LayerParams = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def _call(op: Callable, *args):
    """op(*args), past torch.library's autograd kernel when no argument needs a gradient. That
    kernel, written in Python, then only runs the operator below autograd, and its redispatch
    costs about 10 us a call: a tenth of a small layer's call, more of a cell's. Under
    torch.compile the operator is called as it is, for the compiler to trace."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled()
                                          and torch._C._any_requires_grad(*args)):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


# ---- cells ------------------------------------------------------------------------------------
def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One LSTM step. input: (N, I); hx: (h, c), each (N, H); w_ih: (4H, I); w_hh: (4H, H);
    b_ih, b_hh: (4H,). Returns (h', c'), each (N, H)."""
    _exact.refuse_forward_ad("lstm_cell", input, *hx, w_ih, w_hh, b_ih, b_hh)
    h, c, _ = _call(rnnkit_ops.lstm_cell, input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh)
    return h, c


def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
    """One GRU step. input: (N, I); hx: (N, H); w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: (3H,).
    Returns h': (N, H)."""
    _exact.refuse_forward_ad("gru_cell", input, hx, w_ih, w_hh, b_ih, b_hh)
    return _call(rnnkit_ops.gru_cell, input, hx, w_ih, w_hh, b_ih, b_hh)[0]


def rnn_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, nonlinearity: str = "tanh") -> Tensor:
    """One Elman RNN step, h' = act(W_ih x + b_ih + W_hh h + b_hh) with act tanh or relu.
    input: (N, I); hx: (N, H); w_ih: (H, I); w_hh: (H, H); b_ih, b_hh: (H,). Returns (N, H)."""
    _exact.refuse_forward_ad("rnn_cell", input, hx, w_ih, w_hh, b_ih, b_hh)
    return _call(rnnkit_ops.rnn_cell, input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)


# ---- one layer in one direction ---------------------------------------------------------------
# Each takes (x, batch_sizes, states, params, reverse, zoneout) and returns (output, states): the
# shape that stack_layers composes; rnnkit.reference provides the same three in plain PyTorch.
# zoneout: one entry per state (h, then c for the LSTM): a mask (T, N, F) of zeros and ones
# (training), a probability (evaluation: the expectation), or None (none).
Zoneout = Sequence[Optional[Union[Tensor, float]]]


def _zoneout_args(zoneout: Zoneout, kinds: int) -> list:
    """The operators' zoneout arguments (mask, p) per state kind from a layer's zoneout entries;
    none at all without zoneout (the operators' defaults)."""
    entries = list(zoneout) + [None] * (kinds - len(zoneout))
    if len(entries) != kinds:
        raise ValueError(f"zoneout: expected at most {kinds} entries (one per state), got "
                         f"{len(zoneout)}")
    if all(z is None or (not isinstance(z, Tensor) and z == 0) for z in entries):
        return []
    args: list = []
    for z in entries:
        args += [z, 0.0] if isinstance(z, Tensor) else [None, float(z or 0.0)]
    return args


def zoneout_masks(x: Tensor, batch_sizes: Tensor | None, widths: Sequence[int],
                  probs: Sequence[float], training: bool) -> list:
    """One layer-direction's zoneout entries (see Zoneout) for states of the given widths: in
    training a mask (T, N, F) per state with p > 0, drawn from torch's generator; else the
    probabilities. x: (T, N, I), or (P, I) with batch_sizes (T,)."""
    if not training:
        return [p if p > 0 else None for p in probs]
    T = x.shape[0] if batch_sizes is None else len(batch_sizes)
    N = x.shape[1] if batch_sizes is None else (int(batch_sizes[0]) if T else 0)
    return [x.new_empty((T, N, F)).bernoulli_(p) if p > 0 else None
            for F, p in zip(widths, probs)]


def _needs_workspace(*tensors: Tensor | None) -> bool:
    """Whether autograd will need the layer's backward: only then is its workspace kept."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm_layer(x: Tensor, batch_sizes: Tensor | None, states: tuple[Tensor, ...],
               params: LayerParams, reverse: bool,
               zoneout: Zoneout = ()) -> tuple[Tensor, tuple[Tensor, ...]]:
    w_ih, w_hh, b_ih, b_hh, w_hr = params
    _exact.refuse_forward_ad("lstm", x, *states, *params)
    train = _needs_workspace(x, *states, *params)
    out, h, c, _ = _call(rnnkit_ops.lstm, x, batch_sizes, states[0], states[1], w_ih, w_hh, b_ih,
                         b_hh, w_hr, reverse, train, *_zoneout_args(zoneout, 2))
    return out, (h, c)


def gru_layer(x: Tensor, batch_sizes: Tensor | None, states: tuple[Tensor, ...],
              params: LayerParams, reverse: bool,
              zoneout: Zoneout = ()) -> tuple[Tensor, tuple[Tensor, ...]]:
    w_ih, w_hh, b_ih, b_hh, _ = params
    _exact.refuse_forward_ad("gru", x, *states, *params)
    train = _needs_workspace(x, *states, *params)
    out, h, _ = _call(rnnkit_ops.gru, x, batch_sizes, states[0], w_ih, w_hh, b_ih, b_hh, reverse,
                      train, *_zoneout_args(zoneout, 1))
    return out, (h,)


def rnn_layer(nonlinearity: str) -> Callable:
    def layer(x, batch_sizes, states, params, reverse, zoneout: Zoneout = ()):
        w_ih, w_hh, b_ih, b_hh, _ = params
        _exact.refuse_forward_ad("rnn", x, *states, *params)
        out, h = _call(rnnkit_ops.rnn, x, batch_sizes, states[0], w_ih, w_hh, b_ih, b_hh,
                       nonlinearity, reverse, *_zoneout_args(zoneout, 1))
        return out, (h,)

    return layer


def zoneout_probs(name: str, zoneout: float, zoneout_cell: Optional[float] = None,
                  cell_state: bool = False) -> tuple[float, ...]:
    """The checked zoneout probabilities per state kind: (h,) or, with a cell state, (h, c)
    (zoneout_cell None: zoneout's). Each in [0, 1), else ValueError."""
    probs = [("zoneout", zoneout)]
    if cell_state:
        probs.append(("zoneout_cell", zoneout if zoneout_cell is None else zoneout_cell))
    elif zoneout_cell is not None:
        raise ValueError(f"{name}: zoneout_cell is for the LSTM's cell state only, got "
                         f"zoneout_cell={zoneout_cell!r}")
    for arg, p in probs:
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1):
            raise ValueError(f"{name}: {arg} should be a probability in [0, 1), got {p!r}")
    return tuple(float(p) for _, p in probs)


# ---- stacks of layers -------------------------------------------------------------------------
def stack_layers(layer: Callable, input: Tensor, batch_sizes: Tensor | None,
                 states: Sequence[Tensor], params: Sequence[LayerParams], num_layers: int,
                 bidirectional: bool, dropout: float, training: bool,
                 zoneout: Sequence[float] = (), *,
                 variational_dropout: float = 0.0) -> tuple[Tensor, list[Tensor]]:
    """Runs num_layers layers, each in one or two directions, time-major.

    input: (T, N, I) or packed (P, I); states: one (L*D, N, *) tensor per state kind (h, and c
    for LSTM), rows ordered layer by layer, forward before reverse; params: L*D tuples.
    Returns the last layer's output, (T, N, D*R) or (P, D*R), and the final states, one
    (L*D, N, *) tensor per kind. In training: ``dropout`` (per element, torch.nn's) acts on every
    layer's output but the last; ``variational_dropout`` multiplies every layer's input (the
    stack's input and, after ``dropout``, each layer's output but the last) by a mask of one row
    per sequence, drawn once per layer and shared by all time steps and both directions.
    zoneout: a probability per state kind (h, then c), none: no zoneout (zoneout_masks draws the
    masks, in training; in evaluation the layers mix with the probabilities).
    """
    directions = 2 if bidirectional else 1
    finals: list[list[Tensor]] = [[] for _ in states]
    x = input
    for layer_index in range(num_layers):
        if variational_dropout > 0 and training:
            x = _dropout.variational(x, batch_sizes, variational_dropout)
        outs = []
        for d in range(directions):
            k = layer_index * directions + d
            layer_states = tuple(s.select(0, k) for s in states)
            if any(p > 0 for p in zoneout):
                z = zoneout_masks(x, batch_sizes, [s.shape[-1] for s in layer_states], zoneout,
                                  training)
                out, final = layer(x, batch_sizes, layer_states, params[k], d == 1, z)
            else:
                out, final = layer(x, batch_sizes, layer_states, params[k], d == 1)
            outs.append(out)
            for kind, f in enumerate(final):
                finals[kind].append(f)
        x = outs[0] if directions == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and training and layer_index < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    # stack's copy even of one layer's states: a view of them (unsqueeze) would refuse
    # h_n.detach_(), which torch.nn's final states allow (truncated BPTT loops call it).
    return x, [torch.stack(f, 0) for f in finals]


def lstm(input: Tensor, hx: tuple[Tensor, Tensor], params: Sequence[LayerParams], num_layers: int = 1,
         bidirectional: bool = False, dropout: float = 0.0, training: bool = False,
         batch_sizes: Tensor | None = None, zoneout: float = 0.0,
         zoneout_cell: Optional[float] = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A stack of LSTM layers. input: (T, N, I), or (P, I) with batch_sizes; hx: (h0, c0) with
    h0 (L*D, N, R) and c0 (L*D, N, H). Returns output (T, N, D*R) or (P, D*R) and (h_n, c_n).
    zoneout: the probability for h, zoneout_cell for c (None: zoneout's); see the module doc."""
    probs = zoneout_probs("lstm", zoneout, zoneout_cell, cell_state=True)
    out, (h, c) = stack_layers(lstm_layer, input, batch_sizes, hx, params, num_layers,
                               bidirectional, dropout, training, probs)
    return out, (h, c)


def gru(input: Tensor, hx: Tensor, params: Sequence[LayerParams], num_layers: int = 1,
        bidirectional: bool = False, dropout: float = 0.0, training: bool = False,
        batch_sizes: Tensor | None = None, zoneout: float = 0.0) -> tuple[Tensor, Tensor]:
    """A stack of GRU layers. input: (T, N, I), or (P, I) with batch_sizes; hx: (L*D, N, H).
    Returns output (T, N, D*H) or (P, D*H) and h_n (L*D, N, H). zoneout: the probability for h."""
    out, (h,) = stack_layers(gru_layer, input, batch_sizes, (hx,), params, num_layers,
                             bidirectional, dropout, training, zoneout_probs("gru", zoneout))
    return out, h


def rnn(input: Tensor, hx: Tensor, params: Sequence[LayerParams], num_layers: int = 1,
        bidirectional: bool = False, dropout: float = 0.0, training: bool = False,
        batch_sizes: Tensor | None = None, nonlinearity: str = "tanh",
        zoneout: float = 0.0) -> tuple[Tensor, Tensor]:
    """A stack of Elman RNN layers (tanh or relu). Shapes and zoneout as for gru."""
    out, (h,) = stack_layers(rnn_layer(nonlinearity), input, batch_sizes, (hx,), params,
                             num_layers, bidirectional, dropout, training,
                             zoneout_probs("rnn", zoneout))
    return out, h
