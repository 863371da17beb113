"""Drop-in replacements for torch.nn.RNNCell/LSTMCell/GRUCell and torch.nn.RNN/LSTM/GRU.

Same constructor arguments, parameter names and shapes, initialisation, state dicts, forward
signatures and results as torch.nn; the arithmetic runs in rnnkit's fused kernels.
``from_torch(module)`` converts a torch.nn module (weights included); ``module.to_torch()`` goes
back.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional as RF
from .cells import GATES, MODES

_GATES = {mode: GATES[cell] for mode, cell in MODES.items()}


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_like(name: str, what: str, t: Tensor, ref: Tensor, ref_name: str,
                dtype_error: type[Exception] = RuntimeError) -> None:
    if t.dtype != ref.dtype:
        raise dtype_error(f"{name}: expected {what} of dtype {ref.dtype} (the dtype of "
                           f"{ref_name}), got {t.dtype}")
    if t.device != ref.device:
        raise RuntimeError(f"{name}: expected {what} on device {ref.device} (the device of "
                           f"{ref_name}), got {t.device}")


def _check_floating(name: str, input: Tensor) -> None:
    if not input.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point input (float32 or float64; also "
                         f"float16 or bfloat16 on CUDA), got {input.dtype}")


def _check_input_size(name: str, input: Tensor, input_size: int) -> None:
    if input.shape[-1] != input_size:
        raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. Expected "
                           f"{input_size}, got {input.shape[-1]} (input of shape {_shape(input)})")


def _check_state(name: str, what: str, t: Tensor, expected: tuple[int, ...], input: Tensor) -> None:
    if tuple(t.shape) != expected:
        raise RuntimeError(f"{name}: expected {what} of shape {expected}, got {_shape(t)}")
    _check_like(name, what, t, input, "input")


# ---- cells ------------------------------------------------------------------------------------
class _CellBase(nn.Module):
    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device=None,
                 dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        gates = _GATES[mode] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter uniform in ±1/sqrt(hidden_size), as torch.nn."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s

    def _prepare(self, input: Tensor, states: tuple[Optional[Tensor], ...]):
        """Checks input (I,) or (N, I) and states (H,) or (N, H); returns 2-D input, 2-D states
        (zeros where None) and whether the input was batched."""
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        _check_floating(name, input)
        _check_input_size(name, input, self.input_size)
        _check_like(name, "input", input, self.weight_ih, "the parameters", ValueError)
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        expected = (x.shape[0], self.hidden_size)
        out = []
        for k, s in enumerate(states):
            what = "hx" if len(states) == 1 else ("hx[0]", "hx[1]")[k]
            if s is None:
                out.append(x.new_zeros(expected))
                continue
            if s.dim() != input.dim():
                raise RuntimeError(f"{name}: expected {what} with {input.dim()} dimensions like "
                                   f"the input, got {s.dim()} (shape {_shape(s)})")
            s = s if batched else s.unsqueeze(0)
            _check_state(name, what, s, expected, x)
            out.append(s)
        return x, out, batched

    def to_torch(self) -> nn.Module:
        """The torch.nn equivalent of this cell, with the same weights."""
        return _to_torch(self)


class RNNCell(_CellBase):
    """Elman RNN cell: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.

    input: (N, H_in) or (H_in,); hx: (N, H) or (H,), zeros if None. Returns h': (N, H) or (H,).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity!r}. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_TANH", input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        x, (h,), batched = self._prepare(input, (hx,))
        y = RF.rnn_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                        self.nonlinearity)
        return y if batched else y.squeeze(0)


class LSTMCell(_CellBase):
    """LSTM cell (gates i, f, g, o as torch.nn.LSTMCell).

    input: (N, H_in) or (H_in,); hx: a tuple (h, c), each (N, H) or (H,), zeros if None.
    Returns (h', c'), each (N, H) or (H,).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None):
        states = (None, None) if hx is None else tuple(hx)
        if len(states) != 2:
            raise ValueError(f"LSTMCell: expected hx as a tuple (h, c), got {len(states)} tensors")
        x, (h, c), batched = self._prepare(input, states)
        h, c = RF.lstm_cell(x, (h, c), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_CellBase):
    """GRU cell (gates r, z, n as torch.nn.GRUCell).

    input: (N, H_in) or (H_in,); hx: (N, H) or (H,), zeros if None. Returns h': (N, H) or (H,).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        x, (h,), batched = self._prepare(input, (hx,))
        y = RF.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return y if batched else y.squeeze(0)


# ---- layers -----------------------------------------------------------------------------------
class _RNNBase(nn.Module):
    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__()
        name = {"RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(mode, mode)
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size),
                           ("num_layers", num_layers), ("proj_size", proj_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name}: {arg} should be of type int, got: {type(value).__name__}")
        if hidden_size <= 0:
            raise ValueError(f"{name}: hidden_size must be greater than zero, got {hidden_size}")
        if num_layers <= 0:
            raise ValueError(f"{name}: num_layers must be greater than zero, got {num_layers}")
        if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
                and 0 <= dropout <= 1):
            raise ValueError(f"{name}: dropout should be a number in range [0, 1] representing "
                             f"the probability of an element being zeroed, got {dropout!r}")
        if proj_size < 0:
            raise ValueError(f"{name}: proj_size should be a positive integer or zero to disable "
                             f"projections, got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"{name}: proj_size has to be smaller than hidden_size, got "
                             f"proj_size={proj_size}, hidden_size={hidden_size}")
        if proj_size and mode != "LSTM":
            raise ValueError(f"{name}: proj_size argument is only supported for LSTM, not {name}")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        gates = _GATES[mode] * hidden_size
        real_hidden = proj_size or hidden_size
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            for suffix in ("", "_reverse")[:directions]:
                layer_input = input_size if layer == 0 else real_hidden * directions
                shapes = [("weight_ih", (gates, layer_input)), ("weight_hh", (gates, real_hidden))]
                if bias:
                    shapes += [("bias_ih", (gates,)), ("bias_hh", (gates,))]
                if proj_size:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                for base, shape in shapes:
                    pname = f"{base}_l{layer}{suffix}"
                    setattr(self, pname, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(pname)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter uniform in ±1/sqrt(hidden_size), as torch.nn."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """Accepted so code written for torch.nn runs unchanged; rnnkit needs no flat buffer."""

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Parameters grouped per layer and direction, as torch.nn's all_weights."""
        return [[p for p in params if p is not None] for params in self._layer_params()]

    def _layer_params(self) -> list[RF.LayerParams]:
        directions = 2 if self.bidirectional else 1
        out = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[:directions]:
                get = lambda base: getattr(self, f"{base}_l{layer}{suffix}", None)  # noqa: E731
                out.append((get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                            get("weight_hr")))
        return out

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    def to_torch(self) -> nn.Module:
        """The torch.nn equivalent of this layer, with the same weights."""
        return _to_torch(self)

    def _layer(self):
        """The function that runs one layer in one direction (rnnkit.functional's fused ones)."""
        return {"LSTM": RF.lstm_layer, "GRU": RF.gru_layer, "RNN_TANH": RF.rnn_layer("tanh"),
                "RNN_RELU": RF.rnn_layer("relu")}[self.mode]

    def _run(self, input: Union[Tensor, PackedSequence], hx: tuple[Optional[Tensor], ...]):
        """Shared forward: checks, layouts, states; returns (output, final states)."""
        name = type(self).__name__
        directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size or self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            if x.dim() != 2:
                raise ValueError(f"{name}: expected packed data with 2 dimensions (P, H_in), got "
                                 f"{x.dim()}")
            batch, batched = int(batch_sizes[0]) if len(batch_sizes) else 0, True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            batch, batch_sizes, sorted_indices, unsorted_indices = x.shape[1], None, None, None
            if x.shape[0] == 0:  # torch.nn refuses empty sequences too (an empty batch is fine)
                raise RuntimeError(f"{name}: Expected sequence length to be larger than 0 in RNN, "
                                   f"got input of shape {_shape(input)}")
        _check_floating(name, x)
        _check_input_size(name, x, self.input_size)
        _check_like(name, "input", x, self._flat_weights[0], "the parameters", ValueError)

        sizes = [real_hidden] + ([self.hidden_size] if self.mode == "LSTM" else [])
        labels = ["hx"] if len(sizes) == 1 else ["hx[0] (h_0)", "hx[1] (c_0)"]
        states = []
        for label, size, s in zip(labels, sizes, hx):
            expected = (self.num_layers * directions, batch, size)
            if s is None:
                states.append(x.new_zeros(expected))
                continue
            if not packed and s.dim() != (3 if batched else 2):
                raise RuntimeError(
                    f"{name}: for {'batched 3-D' if batched else 'unbatched 2-D'} input, "
                    f"{label} should be {'3-D' if batched else '2-D'}, got a {s.dim()}-D tensor "
                    f"of shape {_shape(s)}")
            if not batched:
                s = s.unsqueeze(1)
            elif sorted_indices is not None:
                s = s.index_select(1, sorted_indices)
            _check_state(name, label, s, expected, x)
            states.append(s)

        out, finals = RF.stack_layers(self._layer(), x, batch_sizes, states, self._layer_params(),
                                      self.num_layers, self.bidirectional, self.dropout,
                                      self.training)
        if packed:
            if unsorted_indices is not None:
                finals = [f.index_select(1, unsorted_indices) for f in finals]
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), finals
        if not batched:
            return out.squeeze(1), [f.squeeze(1) for f in finals]
        return (out.transpose(0, 1) if self.batch_first else out), finals


class RNN(_RNNBase):
    """Multi-layer Elman RNN, drop-in for torch.nn.RNN.

    input: (L, N, H_in), (N, L, H_in) if batch_first, (L, H_in) unbatched, or a PackedSequence;
    hx: (D*num_layers, N, H) or (D*num_layers, H), zeros if None.
    Returns output (L, N, D*H) (batch_first and unbatched as the input) and h_n.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None) -> None:
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(modes[nonlinearity], input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype)

    def forward(self, input, hx: Optional[Tensor] = None):
        out, (h,) = self._run(input, (hx,))
        return out, h


class LSTM(_RNNBase):
    """Multi-layer LSTM, drop-in for torch.nn.LSTM (proj_size included).

    input: (L, N, H_in), (N, L, H_in) if batch_first, (L, H_in) unbatched, or a PackedSequence;
    hx: (h_0, c_0) with h_0 (D*num_layers, N, H_out) and c_0 (D*num_layers, N, H), zeros if None
    (H_out = proj_size or H). Returns output (L, N, D*H_out) and (h_n, c_n).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)

    def forward(self, input, hx: Optional[tuple[Tensor, Tensor]] = None):
        states = (None, None) if hx is None else tuple(hx)
        if len(states) != 2:
            raise ValueError(f"LSTM: expected hx as a tuple (h_0, c_0), got {len(states)} tensors")
        out, (h, c) = self._run(input, states)
        return out, (h, c)


class GRU(_RNNBase):
    """Multi-layer GRU, drop-in for torch.nn.GRU. Shapes as for RNN."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)

    def forward(self, input, hx: Optional[Tensor] = None):
        out, (h,) = self._run(input, (hx,))
        return out, h


# ---- conversion -------------------------------------------------------------------------------
_PAIRS = [(RNNCell, nn.RNNCell), (LSTMCell, nn.LSTMCell), (GRUCell, nn.GRUCell),
          (RNN, nn.RNN), (LSTM, nn.LSTM), (GRU, nn.GRU)]


def _config(module: nn.Module) -> dict:
    keys = ["input_size", "hidden_size", "bias"]
    if isinstance(module, (nn.RNNBase, _RNNBase)):
        keys += ["num_layers", "batch_first", "dropout", "bidirectional"]
        if isinstance(module, (nn.LSTM, LSTM)):
            keys.append("proj_size")
    config = {k: getattr(module, k) for k in keys}
    if isinstance(module, (nn.RNNCell, RNNCell, nn.RNN, RNN)):
        config["nonlinearity"] = module.nonlinearity
    return config


def _convert(module: nn.Module, target: type) -> nn.Module:
    p = next(module.parameters())
    out = target(**_config(module), device=p.device, dtype=p.dtype)
    out.load_state_dict(module.state_dict(), strict=True)
    return out.train(module.training)


def _to_torch(module: nn.Module) -> nn.Module:
    ours = next(o for o, _ in _PAIRS if isinstance(module, o))
    return _convert(module, dict(_PAIRS)[ours])


def from_torch(module: nn.Module) -> nn.Module:
    """The rnnkit equivalent of a torch.nn RNN, LSTM, GRU or cell, with the same weights."""
    for ours, theirs in _PAIRS:
        if type(module) is theirs:
            return _convert(module, ours)
    names = ", ".join(f"torch.nn.{t.__name__}" for _, t in _PAIRS)
    raise TypeError(f"from_torch: expected one of {names}, got {type(module).__name__}")
