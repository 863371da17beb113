"""Drop-in replacements for torch.nn.RNNCell/LSTMCell/GRUCell and torch.nn.RNN/LSTM/GRU.

Same constructor arguments, parameter names and shapes, initialisation, state dicts, forward
signatures and results as torch.nn; the arithmetic runs in rnnkit's fused kernels.
``from_torch(module)`` converts a torch.nn module (weights included); ``module.to_torch()`` goes
back.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import dropout as _dropout
from . import functional as RF
from . import init as _init
from .cells import GATES, MODES

_GATES = {mode: GATES[cell] for mode, cell in MODES.items()}


def _shape(t: Union[Tensor, tuple[int, ...]]) -> str:
    """A shape as "(3, 20)", "(20)" for one dimension (a tensor's, or a tuple of sizes)."""
    return "(" + ", ".join(str(s) for s in (t.shape if isinstance(t, Tensor) else t)) + ")"


# Messages start with torch.nn's words for the same fault (its exception type too), so that code
# written against torch.nn catches and recognises them; rnnkit's detail follows.
_FLOATING = "float32, float64, float16 or bfloat16"


def _autocasting(input: Tensor) -> bool:
    """Whether autocast is on for the input's device: then the operators cast input, states and
    weights to the autocast dtype (rnnkit/ops.py), so mixed dtypes are expected, not a fault (as
    torch.nn.RNNBase.check_input skips its dtype check under autocast)."""
    kind = input.device.type
    return torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)


def _check_input_against_weights(name: str, input: Tensor, weight: Tensor, layer: bool) -> None:
    """The input's dtype and device against the parameters'. torch.nn's layers raise ValueError
    for the dtype (RNNBase.check_input), its cells RuntimeError (ATen's checks). Under autocast
    a floating-point input of any dtype is accepted."""
    if input.dtype != weight.dtype and not (input.is_floating_point() and _autocasting(input)):
        detail = "" if input.is_floating_point() else (
            f"; expected a floating-point input ({_FLOATING}), got {input.dtype}")
        if layer:
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: "
                f"model.to({input.dtype}) (in {name}){detail}")
        raise RuntimeError(
            f"{name}: Input and parameter tensors are not the same dtype, found input tensor "
            f"with {input.dtype} and parameter tensor with {weight.dtype} (convert the input: "
            f"input.to({weight.dtype}), or the module: module.to({input.dtype})){detail}")
    if input.device != weight.device:
        raise RuntimeError(
            f"{name}: Input and parameter tensors are not at the same device, found input tensor "
            f"at {input.device} and parameter tensor at {weight.device}")


def _check_state_against_input(name: str, label: str, state: Tensor, input: Tensor) -> None:
    """A state's dtype and device against the input's (torch's words from ATen's RNN checks).
    Under autocast a floating-point state of any dtype is accepted."""
    if state.dtype != input.dtype and not (state.is_floating_point() and _autocasting(input)):
        raise RuntimeError(
            f"{name}: Input and hidden tensors are not the same dtype, found input tensor with "
            f"{input.dtype} and hidden tensor with {state.dtype} ({label} should have the "
            f"input's dtype)")
    if state.device != input.device:
        raise RuntimeError(
            f"{name}: Input and hidden tensors are not at the same device, found input tensor at "
            f"{input.device} and hidden tensor at {state.device} ({label} should be on the "
            f"input's device)")


def _refuse_proj_size(name: str, proj_size: object) -> None:
    raise ValueError(f"proj_size argument is only supported for LSTM, not RNN or GRU ({name} got "
                     f"proj_size={proj_size!r})")


def _refuse_unexpected(name: str, unexpected: dict) -> None:
    """RNN and GRU take **unexpected only to refuse proj_size as torch.nn does (ValueError, even
    proj_size=0); any other unknown keyword is Python's own TypeError."""
    if "proj_size" in unexpected:
        _refuse_proj_size(name, unexpected["proj_size"])
    if unexpected:
        raise TypeError(f"{name}.__init__() got an unexpected keyword argument "
                        f"{next(iter(unexpected))!r}")


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

    #: How many state tensors forward takes: h (and c for LSTMCell).
    _STATES = 1

    def _prepare(self, input: Tensor, states: tuple[Optional[Tensor], ...]):
        """Checks input (I,) or (N, I) and states (H,) or (N, H), in torch.nn's order and with its
        exception types; returns 2-D input, 2-D states (zeros where None) and whether the input
        was batched."""
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        single = self._STATES == 1
        for k, s in enumerate(states):
            if s is not None and s.dim() not in (1, 2):
                what = "hidden" if single else f"hx[{k}]"
                raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead "
                                 f"(shape {_shape(s)})")
        if len(states) != self._STATES:
            raise RuntimeError(f"{name}: lstm_cell expects two hidden states, got {len(states)} "
                               f"(hx is a tuple (h, c))")
        # Sizes first, then dtypes and devices: ATen's order for cells.
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input has inconsistent input_size: got {input.shape[-1]} "
                               f"expected {self.input_size} (input of shape {_shape(input)})")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        batch = x.shape[0]
        labels = ("hx",) if single else ("hx[0] (h)", "hx[1] (c)")
        out = []
        for k, (label, s) in enumerate(zip(labels, states)):
            if s is None:
                out.append(x.new_zeros(batch, self.hidden_size))
                continue
            if s.dim() != input.dim():
                raise RuntimeError(f"{name}: expected {label} with {input.dim()} dimensions like "
                                   f"the input, got {s.dim()} (shape {_shape(s)})")
            given = s
            s = s if batched else s.unsqueeze(0)
            if s.shape[0] != batch:
                raise RuntimeError(f"{name}: Input batch size {batch} doesn't match hidden{k} "
                                   f"batch size {s.shape[0]} "
                                   f"{self._state_detail(label, given, batch, batched)}")
            if s.shape[1] != self.hidden_size:
                raise RuntimeError(f"{name}: hidden{k} has inconsistent hidden_size: got "
                                   f"{s.shape[1]}, expected {self.hidden_size} "
                                   f"{self._state_detail(label, given, batch, batched)}")
            out.append(s)
        _check_input_against_weights(name, x, self.weight_ih, layer=False)
        for label, given, s in zip(labels, states, out):
            if given is not None:
                _check_state_against_input(name, label, s, x)
        return x, out, batched

    def _state_detail(self, label: str, given: Tensor, batch: int, batched: bool) -> str:
        """What a state size error adds: the state's shape and the one expected (formatted only
        when an error is raised: a cell runs once per step)."""
        want = (batch, self.hidden_size) if batched else (self.hidden_size,)
        return f"({label} of shape {_shape(given)}, expected {_shape(want)})"

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

    _STATES = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None):
        states = (None, None) if hx is None else tuple(hx)
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
_VARIANTS_DOC = """
    Options beyond torch.nn (keyword only; the defaults change nothing):

    - ``weight_drop`` (p in [0, 1)): DropConnect on every ``weight_hh_l{k}{_reverse}`` in
      training, as AWD-LSTM: each forward multiplies the weight by a fresh Bernoulli(1 - p)
      mask scaled by 1/(1 - p) and runs the fused kernels with it; the gradient reaches the
      parameter through that product. The state dict is unchanged.
    - ``variational_dropout`` (p in [0, 1)): in training, each layer's input (the module's
      input, and the input of every layer after the first) is multiplied by a mask of shape
      (N, features), drawn once per forward and shared by every time step (per sequence for a
      PackedSequence). It adds to torch.nn's ``dropout``, which stays a per-element dropout of
      each layer's output but the last: between layers both apply, ``dropout`` first, and a
      feature is kept with probability (1 - dropout) * (1 - variational_dropout).
      Masks are drawn from torch's global generator in this order: every weight_hh's (layer by
      layer, forward before reverse), then, per layer, the variational mask and (between layers)
      the dropout mask.
    - ``forget_bias`` (a number; gated cells only): the forget gate's bias after initialisation
      (LSTM f; GRU z, the fraction of the old state kept), see ``rnnkit.init.forget_bias_``.
    - ``chrono_init`` (T_max, an integer >= 3; gated cells only): chrono initialisation of the
      gate biases, see ``rnnkit.init.chrono_init_``.

    - ``zoneout`` (p in [0, 1)), and ``zoneout_cell`` for the LSTM's c (None: ``zoneout``'s):
      zoneout of the states inside the fused time loops, see ``rnnkit.functional``. Its masks
      are drawn after the weight_hh masks, per layer and direction, after that layer's
      variational mask.

    Both init options are applied by ``reset_parameters``; they cannot be combined. A module
    with ``weight_drop``, ``variational_dropout`` or zoneout has no torch.nn equivalent
    (``to_torch`` refuses it).
"""


class _RNNBase(nn.Module):
    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None, *,
                 weight_drop: float = 0.0, variational_dropout: float = 0.0,
                 forget_bias: Optional[float] = None, chrono_init: Optional[int] = None,
                 zoneout: float = 0.0, zoneout_cell: Optional[float] = None) -> None:
        super().__init__()
        name = type(self).__name__  # as forward's errors: LayerNormLSTM's say LayerNormLSTM
        self.weight_drop = _dropout.check_probability(weight_drop, f"{name}: weight_drop")
        self.variational_dropout = _dropout.check_probability(
            variational_dropout, f"{name}: variational_dropout")
        if forget_bias is not None and chrono_init is not None:
            raise ValueError(f"{name}: forget_bias and chrono_init both set the forget gate's "
                             f"bias; expected one of them, got forget_bias={forget_bias!r} and "
                             f"chrono_init={chrono_init!r}")
        for arg, value in (("forget_bias", forget_bias), ("chrono_init", chrono_init)):
            if value is None:
                continue
            if GATES[MODES.get(mode, "lstm")] == 1:
                raise ValueError(f"{name}: {arg} needs a gated cell (LSTM or GRU); the Elman RNN "
                                 f"has no forget gate (got {arg}={value!r})")
            if not bias:
                raise ValueError(f"{name}: {arg} sets gate biases; expected bias=True, got "
                                 f"bias=False with {arg}={value!r}")
        self.forget_bias = (None if forget_bias is None
                            else _init.check_forget_bias(forget_bias, f"{name}: forget_bias"))
        self.chrono_init = (None if chrono_init is None
                            else _init.check_t_max(chrono_init, f"{name}: chrono_init"))
        # torch.nn.RNNBase's checks, in its order, with its types and words first.
        if not (isinstance(dropout, numbers.Number) and not isinstance(dropout, bool)
                and 0 <= dropout <= 1):
            raise ValueError(f"{name}: dropout should be a number in range [0, 1] representing "
                             f"the probability of an element being zeroed, got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        for arg, value in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: {arg} should be of type bool, got: "
                                f"{type(value).__name__}")
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size),
                           ("num_layers", num_layers)):
            # bool is an int to Python, not a size to rnnkit.
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name}: {arg} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name}: {arg} must be greater than zero, got {value}")
        if not isinstance(proj_size, int) or isinstance(proj_size, bool):
            raise TypeError(f"{name}: proj_size should be of type int, got: "
                            f"{type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError(f"{name}: proj_size should be a positive integer or zero to disable "
                             f"projections, got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"{name}: proj_size has to be smaller than hidden_size, got "
                             f"proj_size={proj_size}, hidden_size={hidden_size}")
        if proj_size and mode != "LSTM":
            _refuse_proj_size(name, proj_size)
        # Zoneout (rnnkit's own, not torch.nn's): checked here so a bad value fails at once.
        self._zoneout_probs = RF.zoneout_probs(name, zoneout, zoneout_cell,
                                               cell_state=mode == "LSTM")
        self.zoneout = float(zoneout)
        if mode == "LSTM":
            self.zoneout_cell = None if zoneout_cell is None else float(zoneout_cell)
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
        """Every parameter uniform in ±1/sqrt(hidden_size), as torch.nn; then forget_bias or
        chrono_init, if set, on the gate biases."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        if self.forget_bias is not None:
            _init.forget_bias_(self, self.forget_bias)
        if self.chrono_init is not None:
            _init.chrono_init_(self, self.chrono_init)

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
                get = lambda base: self._param(f"{base}_l{layer}{suffix}")  # noqa: E731
                out.append((get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                            get("weight_hr")))
        return out

    def _param(self, name: str) -> Optional[Tensor]:
        """getattr(self, name, None), a registered parameter looked up first: a parameter is not
        an attribute of its own, so getattr reaches it through an AttributeError and
        Module.__getattr__ (about 1.3 us each, 5 per layer and direction on every call). A name
        that is not in _parameters (removed by a parametrization or weight_norm, which put a
        property or an attribute in its place) still goes through getattr."""
        p = self._parameters.get(name)
        return p if p is not None else getattr(self, name, None)

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
        for arg in ("weight_drop", "variational_dropout", "forget_bias", "chrono_init"):
            if getattr(self, arg) not in (None, 0.0):
                s += f", {arg}={getattr(self, arg)}"
        if self.zoneout:
            s += f", zoneout={self.zoneout}"
        if getattr(self, "zoneout_cell", None) is not None:
            s += f", zoneout_cell={self.zoneout_cell}"
        return s

    def to_torch(self) -> nn.Module:
        """The torch.nn equivalent of this layer, with the same weights. Refuses a layer with
        weight_drop, variational_dropout or zoneout, which torch.nn has not (the init options
        are just values and convert)."""
        for arg in ("weight_drop", "variational_dropout"):
            if getattr(self, arg) > 0:
                raise ValueError(f"{type(self).__name__}.to_torch: torch.nn has no {arg}; "
                                 f"expected {arg}=0 for a torch.nn equivalent, got "
                                 f"{arg}={getattr(self, arg)} (set module.{arg} = 0.0 to "
                                 f"convert without it)")
        return _to_torch(self)

    def _run_params(self) -> list[RF.LayerParams]:
        """The parameters a forward runs with: in training with weight_drop, every w_hh
        replaced by a freshly masked copy (an autograd op on the parameter)."""
        params = self._layer_params()
        if not (self.training and self.weight_drop > 0):
            return params
        return [(w_ih, _dropout.drop_weight(w_hh, self.weight_drop), b_ih, b_hh, w_hr)
                for w_ih, w_hh, b_ih, b_hh, w_hr in params]

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
        _check_input_against_weights(name, x, getattr(self, self._flat_weights_names[0]),
                                     layer=True)
        if packed and x.dim() != 2:
            raise RuntimeError(f"{name}: input must have 2 dimensions, got {x.dim()} (the data of "
                               f"a PackedSequence is (P, H_in))")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {x.shape[-1]} (input of shape "
                               f"{_shape(input.data if packed else input)})")

        lstm = self.mode == "LSTM"
        sizes = [real_hidden] + ([self.hidden_size] if lstm else [])
        labels = ["hx"] if not lstm else ["hx[0]", "hx[1]"]
        if not packed and any(s is not None and s.dim() != (3 if batched else 2) for s in hx):
            kind, want = ("batched 3-D", 3) if batched else ("unbatched 2-D", 2)
            dims = [f"{s.dim()}-D" if s is not None else "None" for s in hx]
            shapes = ", ".join(f"{label} of shape {_shape(s)}" for label, s in zip(labels, hx)
                               if s is not None)
            states_are = (f"hx should also be {want}-D but got {dims[0]} tensor" if not lstm else
                          f"hx and cx should also be {want}-D but got ({', '.join(dims)}) tensors")
            raise RuntimeError(f"{name}: For {kind} input, {states_are} ({shapes})")
        states = []
        for k, (label, size, s) in enumerate(zip(labels, sizes, hx)):
            expected = (self.num_layers * directions, batch, size)
            if s is None:
                states.append(x.new_zeros(expected))
                continue
            if not batched:
                s = s.unsqueeze(1)
            state, last = ("h_0", "proj_size" if self.proj_size else "hidden_size") if k == 0 \
                else ("c_0", "hidden_size")
            # Checked before a packed input's permutation, which would pick `batch` rows of a
            # state with more and hide the mismatch.
            if tuple(s.shape) != expected:
                what = "hidden" if not lstm else f"hidden[{k}]"
                unbatched = "" if batched else "; batch 1 for unbatched input"
                raise RuntimeError(
                    f"{name}: Expected {what} size {expected}, got {list(s.shape)} ({label} is "
                    f"{state}: (num_layers * num_directions, batch, {last}) = "
                    f"({self.num_layers} * {directions}, {batch}, {size}){unbatched})")
            _check_state_against_input(name, f"{label} ({state})", s, x)
            if sorted_indices is not None:
                s = s.index_select(1, sorted_indices)
            states.append(s)

        out, finals = RF.stack_layers(self._layer(), x, batch_sizes, states, self._run_params(),
                                      self.num_layers, self.bidirectional, self.dropout,
                                      self.training, self._zoneout_probs,
                                      variational_dropout=self.variational_dropout)
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
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None, *,
                 weight_drop: float = 0.0, variational_dropout: float = 0.0,
                 forget_bias: Optional[float] = None, chrono_init: Optional[int] = None,
                 zoneout: float = 0.0, **unexpected) -> None:
        _refuse_unexpected("RNN", unexpected)
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(modes[nonlinearity], input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype,
                         weight_drop=weight_drop, variational_dropout=variational_dropout,
                         forget_bias=forget_bias, chrono_init=chrono_init, zoneout=zoneout)

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
                 proj_size: int = 0, device=None, dtype=None, *, weight_drop: float = 0.0,
                 variational_dropout: float = 0.0, forget_bias: Optional[float] = None,
                 chrono_init: Optional[int] = None, zoneout: float = 0.0,
                 zoneout_cell: Optional[float] = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, weight_drop=weight_drop,
                         variational_dropout=variational_dropout, forget_bias=forget_bias,
                         chrono_init=chrono_init, zoneout=zoneout, zoneout_cell=zoneout_cell)

    def forward(self, input, hx: Optional[tuple[Tensor, Tensor]] = None):
        states = (None, None) if hx is None else tuple(hx)
        if len(states) != 2:
            raise RuntimeError(f"LSTM: lstm expects two hidden states, got {len(states)} (hx is a "
                               f"tuple (h_0, c_0))")
        out, (h, c) = self._run(input, states)
        return out, (h, c)


class GRU(_RNNBase):
    """Multi-layer GRU, drop-in for torch.nn.GRU. Shapes as for RNN.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, weight_drop: float = 0.0,
                 variational_dropout: float = 0.0, forget_bias: Optional[float] = None,
                 chrono_init: Optional[int] = None, zoneout: float = 0.0,
                 **unexpected) -> None:
        _refuse_unexpected("GRU", unexpected)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, weight_drop=weight_drop,
                         variational_dropout=variational_dropout, forget_bias=forget_bias,
                         chrono_init=chrono_init, zoneout=zoneout)

    def forward(self, input, hx: Optional[Tensor] = None):
        out, (h,) = self._run(input, (hx,))
        return out, h


for _layer_class in (RNN, LSTM, GRU):
    _layer_class.__doc__ += _VARIANTS_DOC


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
    if isinstance(module, _RNNBase):  # rnnkit's own options
        config["zoneout"] = module.zoneout
        if isinstance(module, LSTM):
            config["zoneout_cell"] = module.zoneout_cell
    return config


_OWN_OPTIONS = ("zoneout", "zoneout_cell")


def _convert(module: nn.Module, target: type) -> nn.Module:
    p = next(module.parameters())
    config = _config(module)
    if not issubclass(target, (_CellBase, _RNNBase)):
        # torch.nn has no zoneout: a module that zones out would run differently there.
        own = {k: v for k, v in config.items() if k in _OWN_OPTIONS and v}
        if own:
            raise ValueError(f"to_torch: torch.nn.{target.__name__} has no zoneout, and this "
                             f"{type(module).__name__} has {own}; build it with zoneout=0 (and "
                             f"zoneout_cell=None) to convert it")
        config = {k: v for k, v in config.items() if k not in _OWN_OPTIONS}
    out = target(**config, device=p.device, dtype=p.dtype)
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
