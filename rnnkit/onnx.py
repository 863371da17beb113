"""ONNX export of models with rnnkit layers, to ONNX's standard LSTM, GRU and RNN operators.

    import rnnkit.onnx
    rnnkit.onnx.export(model.eval(), (x,), "model.onnx",
                       dynamic_shapes=({0: "T", 1: "N"},))     # any torch.onnx.export option

The exported model holds only standard ONNX operators (domain ""), so onnxruntime, or any
runtime with ONNX's LSTM, GRU and RNN (opset 14 or later), runs it without rnnkit or torch.
``translation_table()`` gives the translations for a ``torch.onnx.export(...,
custom_translation_table=...)`` call of your own.

Each rnnkit operator runs one layer in one direction (torch.ops.rnnkit.lstm / gru / rnn, and
the cells); each becomes one ONNX node with direction "forward" or "reverse" (a bidirectional
layer is two of them, as in rnnkit). What the translation converts:
  - gate order: torch's LSTM i, f, g, o becomes ONNX's i, o, f, c; GRU r, z, n becomes z, r, h
    (ONNX's GRU with linear_before_reset=1 computes torch's GRU);
  - biases: torch's b_ih and b_hh become ONNX's B = [Wb, Rb] (zeros where one is absent);
  - states: (N, H) per operator becomes ONNX's (1, N, H);
  - packed input (P, I) with batch_sizes (T,) becomes padded (T, N, I) with sequence_lens (N,),
    and the output goes back to (P, H).
What ONNX cannot express raises ``UnsupportedForONNX`` with one line naming the option:
LSTM projections (proj_size).

Needs the optional dependencies onnx and onnxscript (and onnxruntime to run the result):
``pip install "rnnkit[export]"``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional, Sequence

import torch

from . import ops as _ops  # noqa: F401  (registers the operators the exported graph holds)

__all__ = ["export", "translation_table", "check_exportable", "UnsupportedForONNX", "EXTRA"]

EXTRA = 'pip install "rnnkit[export]"'

#: ONNX's gate order as indices into torch's: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h.
ONNX_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}

#: ONNX's name for each RNN nonlinearity.
ONNX_ACTIVATION = {"tanh": "Tanh", "relu": "Relu"}


class UnsupportedForONNX(ValueError):
    """A form of rnnkit layer that ONNX's operators cannot express."""


def _require(*modules: str) -> list[Any]:
    """Imports the optional export dependencies, or raises one line naming the extra."""
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as error:
            raise ImportError(f"rnnkit.onnx needs the package {name!r}, which is not installed "
                              f"({error}); install the export extra: {EXTRA}") from None
    return loaded


# ---- what ONNX cannot express ----------------------------------------------------------------
def _unsupported_reason(op: str, args: dict[str, Any]) -> Optional[str]:
    """Why rnnkit's operator ``op`` with these arguments has no ONNX translation, or None.

    args: the operator's arguments by schema name; only whether each is None is read, so both
    the exporter's symbolic values and torch.fx nodes can be passed.
    """
    if op == "lstm" and args.get("w_hr") is not None:
        return ("rnnkit.onnx: LSTM with proj_size > 0 cannot be exported to ONNX (ONNX's LSTM "
                "operator has no projection of the hidden state); export a model with proj_size=0")
    masks = [args.get(n) for n in ("zoneout_h", "zoneout_c")]
    probs = [args.get(n) for n in ("zoneout_h_p", "zoneout_c_p")]
    if any(m is not None for m in masks) or any(
            isinstance(p, (int, float)) and p != 0 for p in probs):
        return (f"rnnkit.onnx: {op} with zoneout cannot be exported to ONNX (ONNX's recurrent "
                "operators have no zoneout); export a model with zoneout=0")
    return None


def _check(op: str, args: dict[str, Any]) -> None:
    reason = _unsupported_reason(op, args)
    if reason is not None:
        raise UnsupportedForONNX(reason)


def check_exportable(program: torch.export.ExportedProgram) -> None:
    """Raises UnsupportedForONNX (one line) if an rnnkit operator in ``program`` cannot be
    translated: before the exporter starts, so the error is not buried in its report."""
    for node in program.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        namespace, _, name = node.target.name().partition("::")
        if namespace != "rnnkit":
            continue
        if name not in TRANSLATED_OPS:
            raise UnsupportedForONNX(f"rnnkit.onnx: the operator rnnkit::{name} has no ONNX "
                                     f"translation (translated: {', '.join(TRANSLATED_OPS)})")
        schema = node.target._schema
        args = {a.name: a.default_value if a.has_default_value() else None
                for a in schema.arguments}
        args.update(zip((a.name for a in schema.arguments), node.args))
        args.update(node.kwargs)
        _check(name, args)


# ---- translations ----------------------------------------------------------------------------
# The exporter calls these with symbolic ONNX values (in the operator's schema order) and
# records the onnxscript operators they call. Tensor parameters carry no type hints on purpose:
# the exporter reads the hints to tell ONNX attributes (bool, str) from inputs.
def _op():
    from onnxscript import opset18

    return opset18


def _onnx_gates(op, w, cell: str):
    """A torch-ordered (G*H, ...) weight or bias in ONNX's gate order."""
    order = ONNX_GATE_ORDER[cell]
    if len(order) == 1:
        return w
    gates = op.Reshape(w, op.Constant(value_ints=[len(order), -1]))
    gates = op.Gather(gates, op.Constant(value_ints=list(order)), axis=0)
    return op.Reshape(gates, op.Shape(w))


def _onnx_bias(op, b_ih, b_hh, w_ih, cell: str):
    """ONNX's B, (1, 2*G*H): [Wb, Rb] in ONNX's gate order; None when both biases are absent."""
    if b_ih is None and b_hh is None:
        return None
    zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), w_ih), op.Shape(w_ih, end=1))
    b_ih = zeros if b_ih is None else b_ih
    b_hh = zeros if b_hh is None else b_hh
    both = op.Concat(_onnx_gates(op, b_ih, cell), _onnx_gates(op, b_hh, cell), axis=0)
    return op.Unsqueeze(both, op.Constant(value_ints=[0]))


class _Packed:
    """The ONNX values that turn packed rows (P, ...) with batch_sizes (T,) into padded
    (T, N, ...) with sequence_lens (N,), and back."""

    def __init__(self, op, batch_sizes) -> None:
        zero, one = op.Constant(value_ints=[0]), op.Constant(value_ints=[1])
        n = op.Range(op.Constant(value_int=0), op.Gather(batch_sizes, op.Constant(value_int=0)),
                     op.Constant(value_int=1))  # (N,): batch_sizes[0] is the batch
        # active[t, n]: whether sequence n has a step t (batch_sizes is non-increasing)
        self.active = op.Less(op.Unsqueeze(n, zero), op.Unsqueeze(batch_sizes, one))
        self.sequence_lens = op.ReduceSum(op.Cast(self.active, to=6), zero, keepdims=0)  # int32
        # the packed row of (t, n): the rows before step t, plus n
        first_row = op.CumSum(batch_sizes, op.Constant(value_int=0), exclusive=1)
        rows = op.Add(op.Unsqueeze(first_row, one), op.Unsqueeze(n, zero))
        self.rows = op.Where(self.active, rows, op.Constant(value_int=0))
        # (P, 2): (t, n) of each packed row, in packed (time-major) order
        self.steps = op.Transpose(op.NonZero(self.active), perm=[1, 0])
        self.op = op

    def pad(self, x):
        """(P, I) -> (T, N, I), zeros past each sequence's end."""
        op = self.op
        padded = op.Gather(x, self.rows, axis=0)
        mask = op.Unsqueeze(self.active, op.Constant(value_ints=[2]))
        return op.Where(mask, padded, op.CastLike(op.Constant(value_float=0.0), x))

    def pack(self, y):
        """(T, N, H) -> (P, H)."""
        return self.op.GatherND(y, self.steps)


def _run_layer(cell: str, input, batch_sizes, states: Sequence, w_ih, w_hh, b_ih, b_hh,
               reverse: bool, activation: Optional[str] = None):
    """One ONNX LSTM/GRU/RNN node over input (T, N, I), or packed (P, I) with batch_sizes.
    states: (N, H) each. Returns the output, (T, N, H) or (P, H), and the final states, (N, H)."""
    op = _op()
    hidden = w_hh.shape[1]
    if not isinstance(hidden, int):
        raise UnsupportedForONNX(f"rnnkit.onnx: the hidden size must be static, got {hidden}")
    zero = op.Constant(value_ints=[0])
    packed = _Packed(op, batch_sizes) if batch_sizes is not None else None
    x = packed.pad(input) if packed else input
    weights = [op.Unsqueeze(_onnx_gates(op, w, cell), zero) for w in (w_ih, w_hh)]
    attributes: dict[str, Any] = {"direction": "reverse" if reverse else "forward",
                                  "hidden_size": hidden}
    if cell == "gru":
        attributes["linear_before_reset"] = 1
    if cell == "rnn":
        attributes["activations"] = [ONNX_ACTIVATION[activation]]
    node_inputs = [x, *weights, _onnx_bias(op, b_ih, b_hh, w_ih, cell),
                   packed.sequence_lens if packed else None,
                   *(op.Unsqueeze(s, zero) for s in states)]
    onnx_op = {"lstm": op.LSTM, "gru": op.GRU, "rnn": op.RNN}[cell]
    y, *finals = onnx_op(*node_inputs, **attributes)
    y = op.Squeeze(y, op.Constant(value_ints=[1]))  # (T, 1, N, H): one direction
    if packed:
        y = packed.pack(y)
    return y, [op.Squeeze(f, zero) for f in finals]


def _no_workspace(input):
    """The workspace output, which no exported graph reads: an empty tensor."""
    op = _op()
    return op.CastLike(op.ConstantOfShape(op.Constant(value_ints=[0])), input)


def lstm(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse: bool,
         train: bool = True, zoneout_h=None, zoneout_h_p: float = 0.0, zoneout_c=None,
         zoneout_c_p: float = 0.0):
    """rnnkit::lstm -> ONNX LSTM. Returns (output, h_n, c_n, workspace)."""
    _check("lstm", {"w_hr": w_hr, "zoneout_h": zoneout_h, "zoneout_h_p": zoneout_h_p,
                    "zoneout_c": zoneout_c, "zoneout_c_p": zoneout_c_p})
    y, (h, c) = _run_layer("lstm", input, batch_sizes, (h0, c0), w_ih, w_hh, b_ih, b_hh, reverse)
    return y, h, c, _no_workspace(input)


def gru(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse: bool, train: bool = True,
        zoneout_h=None, zoneout_h_p: float = 0.0):
    """rnnkit::gru -> ONNX GRU (linear_before_reset=1). Returns (output, h_n, workspace)."""
    _check("gru", {"zoneout_h": zoneout_h, "zoneout_h_p": zoneout_h_p})
    y, (h,) = _run_layer("gru", input, batch_sizes, (h0,), w_ih, w_hh, b_ih, b_hh, reverse)
    return y, h, _no_workspace(input)


def rnn(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity: str, reverse: bool,
        zoneout_h=None, zoneout_h_p: float = 0.0):
    """rnnkit::rnn -> ONNX RNN (Tanh or Relu). Returns (output, h_n)."""
    _check("rnn", {"zoneout_h": zoneout_h, "zoneout_h_p": zoneout_h_p})
    y, (h,) = _run_layer("rnn", input, batch_sizes, (h0,), w_ih, w_hh, b_ih, b_hh, reverse,
                         nonlinearity)
    return y, h


def _one_step(input):
    """A cell's input (N, I) as a sequence of one step, (1, N, I)."""
    op = _op()
    return op.Unsqueeze(input, op.Constant(value_ints=[0]))


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    """rnnkit::lstm_cell -> ONNX LSTM over one step. Returns (hy, cy, workspace)."""
    _, (h, c) = _run_layer("lstm", _one_step(input), None, (hx, cx), w_ih, w_hh, b_ih, b_hh,
                           False)
    return h, c, _no_workspace(input)


def gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh):
    """rnnkit::gru_cell -> ONNX GRU over one step. Returns (hy, workspace)."""
    _, (h,) = _run_layer("gru", _one_step(input), None, (hx,), w_ih, w_hh, b_ih, b_hh, False)
    return h, _no_workspace(input)


def rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity: str):
    """rnnkit::rnn_cell -> ONNX RNN over one step. Returns hy."""
    _, (h,) = _run_layer("rnn", _one_step(input), None, (hx,), w_ih, w_hh, b_ih, b_hh, False,
                         nonlinearity)
    return h


_TRANSLATIONS: dict[str, Callable] = {
    "lstm": lstm, "gru": gru, "rnn": rnn, "lstm_cell": lstm_cell, "gru_cell": gru_cell,
    "rnn_cell": rnn_cell,
}
#: rnnkit's operators that export to ONNX (their backward operators do not: export for inference).
TRANSLATED_OPS = tuple(_TRANSLATIONS)


def translation_table() -> dict[torch._ops.OpOverload, Callable]:
    """The translations for ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``:
    one entry per rnnkit forward operator (torch.ops.rnnkit.lstm.default and so on)."""
    _require("onnx", "onnxscript")
    return {getattr(torch.ops.rnnkit, name).default: fn for name, fn in _TRANSLATIONS.items()}


# ---- export ----------------------------------------------------------------------------------
def export(model: torch.nn.Module | torch.export.ExportedProgram, args: tuple, f: Any = None, *,
           kwargs: Optional[dict[str, Any]] = None, dynamic_shapes: Any = None,
           **options: Any) -> "torch.onnx.ONNXProgram":
    """Exports ``model`` (with rnnkit layers, cells or functional calls) to ONNX.

    model: an nn.Module (call .eval() first: dropout in training mode is exported as such) or a
    torch.export.ExportedProgram. args, kwargs: example inputs, as for torch.export.export.
    f: where to save the .onnx file (a path), or None to keep the returned program unsaved.
    dynamic_shapes: as for torch.export.export, e.g. ``({0: "T", 1: "N"},)`` for an input
    (T, N, I) whose sequence length and batch may change (example sizes of at least 2: torch
    specializes axes of size 0 or 1). options: more torch.onnx.export arguments (input_names,
    output_names, opset_version, optimize, ...).

    Returns the torch.onnx.ONNXProgram. Raises UnsupportedForONNX (one line) for a form that
    ONNX cannot express, ImportError naming the extra when onnx or onnxscript is missing.
    """
    _require("onnx", "onnxscript")
    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        program = torch.export.export(model, tuple(args), kwargs=kwargs,
                                      dynamic_shapes=_dims(dynamic_shapes))
    check_exportable(program)
    options.setdefault("verbose", False)  # the exporter's progress lines, on stdout otherwise
    return torch.onnx.export(program, tuple(args), f, kwargs=kwargs, dynamo=True,
                             custom_translation_table=translation_table(), **options)


def _dims(spec: Any, made: Optional[dict[str, Any]] = None) -> Any:
    """dynamic_shapes with axis names ("T") made torch.export.Dim's, one per name (so that two
    inputs' axes of one name are the same size)."""
    made = {} if made is None else made
    if isinstance(spec, str):
        return made.setdefault(spec, torch.export.Dim(spec))
    if isinstance(spec, dict):
        return {k: _dims(v, made) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return type(spec)(_dims(v, made) for v in spec)
    return spec
