"""Autograd, fake (meta) and autocast implementations of the operators declared in
csrc/rnnkit.cpp.

The kernels themselves are registered in C++ (torch.ops.rnnkit.*). Here each forward operator
gets a backward that calls its C++ backward operator (under create_graph=True, the exact
differentiable one of rnnkit/double_backward.py instead), and every operator gets a fake
implementation that gives output shapes without computing, for torch.compile and opcheck.

Workspace widths (values per packed row saved for backward) come from the kernels' own cell
descriptions (csrc/common/cells/) through ``rnnkit._C.workspace_width``; the Elman RNN saves none
(backward reads the output). The LSTM and GRU layer operators take ``train``: with False
(inference) they keep no workspace and return an empty one, (0,). The layer operators and their
backward take the zoneout arguments last (zoneout_h, zoneout_h_p, and the LSTM's zoneout_c,
zoneout_c_p: a mask, or else a probability; csrc/common/zoneout.h); backward gets the forward's.
"""

from __future__ import annotations

import functools

import torch

from . import _library  # noqa: F401  (loads the operators, or says how to build them)
from . import _C  # after _library, whose import guard explains a missing build
from . import double_backward as _exact
from . import lstm_second_order as _second_order

ops = torch.ops.rnnkit


def _rows(input: torch.Tensor, batch_sizes: torch.Tensor | None) -> int:
    """Packed rows P: T * N for padded input [T, N, I], P for packed input [P, I]."""
    return input.shape[0] * input.shape[1] if batch_sizes is None else input.shape[0]


def _out(input: torch.Tensor, features: int) -> torch.Tensor:
    return input.new_empty((*input.shape[:-1], features))


# ---- fake implementations ---------------------------------------------------------------------
# The dispatcher sends a call to the fake (Meta) implementation as soon as one argument is a meta
# tensor, so a direct call that mixes a CPU input with a meta state would otherwise "succeed" and
# hand back uninitialised CPU tensors. Each fake therefore checks what the kernels check about
# devices and dtypes first (shapes are left to the kernels, which see the real sizes).
def _compute_dtype(input: torch.Tensor) -> torch.dtype:
    """The dtype of the workspace for this input: float32 for float16 and bfloat16 on the CPU,
    whose kernels compute in float32 (Backend::compute_dtype, csrc/cpu/time_loop.h); else the
    input's."""
    if input.device.type == "cpu" and input.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return input.dtype


def _check_like_input(op: str, args: dict) -> None:
    """Every tensor argument on input's device and in its dtype (the workspace in the kernels'
    compute dtype); batch_sizes (int64) on the CPU or on input's device."""
    ref = args["input"]
    for name, t in args.items():
        if name == "input" or not isinstance(t, torch.Tensor):
            continue
        if name == "workspace":
            want = _compute_dtype(ref)
            if t.dtype != want or t.device != ref.device:
                raise RuntimeError(f"rnnkit::{op}: expected workspace of dtype {want} on device "
                                   f"{ref.device}, got {t.dtype} on {t.device}")
            continue
        if name == "batch_sizes":
            if t.device.type != "cpu" and t.device != ref.device:
                raise RuntimeError(f"rnnkit::{op}: expected batch_sizes on the CPU or on device "
                                   f"{ref.device} (the device of input), got {t.device}")
            continue
        if t.device != ref.device:
            raise RuntimeError(f"rnnkit::{op}: expected {name} on device {ref.device} (the device "
                               f"of input), got {t.device}")
        if t.dtype != ref.dtype:
            raise RuntimeError(f"rnnkit::{op}: expected {name} to have dtype {ref.dtype} (the "
                               f"dtype of input), got {t.dtype}")


def _fake(op: str):
    """register_fake for rnnkit::op, with the device and dtype checks of _check_like_input."""
    names = [a.name for a in getattr(ops, op).default._schema.arguments]

    def register(fn):
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            _check_like_input(op, {**dict(zip(names, args)), **kwargs})
            return fn(*args, **kwargs)

        torch.library.register_fake(f"rnnkit::{op}")(checked)
        return fn

    return register


def _width(cell: str, H: int, proj: bool = False) -> int:
    """Values per packed row that cell's layer saves for backward, for hidden size H: the
    kernels' own definition (Layout::width in csrc/common/cells/)."""
    return _C.workspace_width(cell, H, proj)


def _workspace(input, batch_sizes, width: int, train: bool) -> torch.Tensor:
    """The workspace a layer operator returns: (P, width) in training, (0,) without."""
    return input.new_empty((_rows(input, batch_sizes), width) if train else (0,),
                           dtype=_compute_dtype(input))


@_fake("lstm")
def _(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train=True,
      zoneout_h=None, zoneout_h_p=0.0, zoneout_c=None, zoneout_c_p=0.0):
    H, R = c0.shape[-1], h0.shape[-1]  # c0: (N, H); h0: (N, R), R = proj_size or H
    ws = _workspace(input, batch_sizes, _width("lstm", H, w_hr is not None), train)
    return _out(input, R), torch.empty_like(h0), torch.empty_like(c0), ws


@_fake("lstm_backward")
def _(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, w_hr, output,
      workspace, reverse, zoneout_h=None, zoneout_h_p=0.0, zoneout_c=None, zoneout_c_p=0.0):
    grad_w_hr = input.new_empty((0,)) if w_hr is None else torch.empty_like(w_hr)
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(c0),
            torch.empty_like(w_ih), torch.empty_like(w_hh), w_ih.new_empty((w_ih.shape[0],)),
            grad_w_hr)


@torch.library.register_fake("rnnkit::lstm_adjoint_steps")
def _(src_h, src_c, src_a, dh_last, dc_last, steps, c_prev, tau, w_hh):
    return tau.new_empty((*tau.shape[:2], 4 * tau.shape[2])), torch.empty_like(tau), \
        torch.empty_like(tau)


@torch.library.register_fake("rnnkit::lstm_tangent_steps")
def _(a_in, h0_dot, c0_dot, steps, c_prev, tau, w_hh):
    return torch.empty_like(a_in), torch.empty_like(tau), torch.empty_like(tau)


@torch.library.register_fake("rnnkit::lstm_second_order_sources")
def _(steps, c_prev, tau, a_dot, c_dot, c0_dot, dh, dc):
    return a_dot.new_empty(a_dot.shape), c_dot.new_empty(c_dot.shape)


@_fake("lstm_cell")
def _(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    ws = input.new_empty((input.shape[0], _width("lstm", hx.shape[1])),
                         dtype=_compute_dtype(input))
    return torch.empty_like(hx), torch.empty_like(cx), ws


@_fake("lstm_cell_backward")
def _(grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, hy, workspace):
    return (torch.empty_like(input), torch.empty_like(hx), torch.empty_like(cx),
            torch.empty_like(w_ih), torch.empty_like(w_hh), w_ih.new_empty((w_ih.shape[0],)))


@_fake("gru")
def _(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse, train=True, zoneout_h=None,
      zoneout_h_p=0.0):
    H = h0.shape[-1]
    return _out(input, H), torch.empty_like(h0), _workspace(input, batch_sizes, _width("gru", H), train)


@_fake("gru_backward")
def _(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output, workspace, reverse,
      zoneout_h=None, zoneout_h_p=0.0):
    G = w_ih.shape[0]
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_ih.new_empty((G,)), w_ih.new_empty((G,)))


@_fake("gru_cell")
def _(input, hx, w_ih, w_hh, b_ih, b_hh):
    ws = input.new_empty((input.shape[0], _width("gru", hx.shape[1])),
                         dtype=_compute_dtype(input))
    return torch.empty_like(hx), ws


@_fake("gru_cell_backward")
def _(grad_hy, input, hx, w_ih, w_hh, hy, workspace):
    G = w_ih.shape[0]
    return (torch.empty_like(input), torch.empty_like(hx), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_ih.new_empty((G,)), w_ih.new_empty((G,)))


@_fake("rnn")
def _(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse, zoneout_h=None,
      zoneout_h_p=0.0):
    return _out(input, w_ih.shape[0]), torch.empty_like(h0)


@_fake("rnn_backward")
def _(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output, nonlinearity, reverse,
      zoneout_h=None, zoneout_h_p=0.0):
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_ih.new_empty((w_ih.shape[0],)))


@_fake("rnn_cell")
def _(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    return torch.empty_like(hx)


@_fake("rnn_cell_backward")
def _(grad_hy, input, hx, w_ih, w_hh, hy, nonlinearity):
    return (torch.empty_like(input), torch.empty_like(hx), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_ih.new_empty((w_ih.shape[0],)))


# ---- autograd ---------------------------------------------------------------------------------
def _bias_grads(ctx, grad_b_ih, grad_b_hh):
    """Bias gradients for the biases that were given (None for absent ones)."""
    return (grad_b_ih if ctx.has_b_ih else None), (grad_b_hh if ctx.has_b_hh else None)


def _setup_biases(ctx, inputs):
    ctx.has_b_ih = inputs["b_ih"] is not None
    ctx.has_b_hh = inputs["b_hh"] is not None


def _unused_grads_none(ctx, *workspaces):
    """Gradients of outputs that the loss does not reach arrive as None rather than as tensors of
    zeros (the backward operators take every output gradient as optional), and the workspaces,
    which no loss can depend on, are not differentiable: without this autograd fills a zero
    gradient as large as the workspace on every backward."""
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(*workspaces)


def _named(op, inputs):
    """The operator's arguments by name: register_autograd passes them by position."""
    names = [a.name for a in op._schema.arguments]
    return dict(zip(names, inputs))


def _input_grads(op, **grads) -> tuple:
    """The gradients of op's inputs, given by argument name, as the tuple autograd expects (one
    entry per schema argument, in order); arguments not named get None."""
    return tuple(grads.get(a.name) for a in op._schema.arguments)


def _require_train(op: str, ctx) -> None:
    """Backward needs the workspace that only a call with train=True keeps. Checked when backward
    runs, not in setup_context: Inductor runs the operator through autograd while it compiles an
    inference graph (train=False, parameters that require grad), which must not fail."""
    if not ctx.train:
        raise RuntimeError(f"rnnkit::{op} was called with train=False, which keeps no workspace "
                           "for backward; call it with train=True to differentiate it")


def _lstm_setup(ctx, inputs, output):
    a = _named(ops.lstm.default, inputs)
    ctx.train = a.get("train", True)
    _unused_grads_none(ctx, output[3])
    _setup_biases(ctx, a)
    ctx.reverse = a["reverse"]
    ctx.zoneout_p = (a.get("zoneout_h_p", 0.0), a.get("zoneout_c_p", 0.0))
    ctx.save_for_backward(a["input"], a["batch_sizes"], a["h0"], a["c0"], a["w_ih"], a["w_hh"],
                          a["w_hr"], output[0], output[3], a["b_ih"], a["b_hh"],
                          a.get("zoneout_h"), a.get("zoneout_c"))


def _lstm_backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_workspace):
    _require_train("lstm", ctx)
    (input, batch_sizes, h0, c0, w_ih, w_hh, w_hr, output, workspace, b_ih, b_hh, zoneout_h,
     zoneout_c) = ctx.saved_tensors
    zoneout = (zoneout_h, ctx.zoneout_p[0], zoneout_c, ctx.zoneout_p[1])
    args = (input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ctx.reverse, True, *zoneout)
    grads = (grad_output, grad_h_n, grad_c_n)
    if _exact.wanted(grads, args):
        if _second_order.supports(input, batch_sizes, c0, w_hr, workspace, zoneout):
            return _lstm_grad(ctx, grads, input, h0, c0, w_ih, w_hh, b_ih, b_hh, output, workspace)
        return _exact.backward("lstm", ctx.needs_input_grad, grads, args)
    g = ops.lstm_backward(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih,
                          w_hh, w_hr, output, workspace, ctx.reverse, *zoneout)
    grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr = g
    grad_b_ih, grad_b_hh = _bias_grads(ctx, grad_bias, grad_bias)
    return _input_grads(ops.lstm.default, input=grad_input, h0=grad_h0, c0=grad_c0,
                        w_ih=grad_w_ih, w_hh=grad_w_hh, b_ih=grad_b_ih, b_hh=grad_b_hh,
                        w_hr=grad_w_hr if w_hr is not None else None)


def _lstm_grad(ctx, grads, input, h0, c0, w_ih, w_hh, b_ih, b_hh, output, workspace):
    """The first gradient as lstm_second_order.LstmGrad, differentiable by its own backward."""
    grad_output, grad_h_n, grad_c_n = (torch.zeros_like(like) if g is None else g
                                       for g, like in zip(grads, (output, h0, c0)))
    need = _named(ops.lstm.default, ctx.needs_input_grad)
    reached = {name: need.get(name, False) and _second_order.reached(t)
               for name, t in (("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh))}
    grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = _second_order.LstmGrad.apply(
        input, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_output, grad_h_n, grad_c_n, output.detach(),
        workspace, ctx.reverse, (reached["w_ih"], reached["w_hh"],
                                 reached["b_ih"] or reached["b_hh"]))
    grad_b_ih, grad_b_hh = _bias_grads(ctx, grad_bias, grad_bias)
    return _input_grads(ops.lstm.default, **{
        name: g for name, g in (("input", grad_input), ("h0", grad_h0), ("c0", grad_c0),
                                ("w_ih", grad_w_ih), ("w_hh", grad_w_hh), ("b_ih", grad_b_ih),
                                ("b_hh", grad_b_hh)) if need.get(name)})


torch.library.register_autograd("rnnkit::lstm", _lstm_backward, setup_context=_lstm_setup)


def _lstm_cell_setup(ctx, inputs, output):
    a = _named(ops.lstm_cell.default, inputs)
    _unused_grads_none(ctx, output[2])
    _setup_biases(ctx, a)
    ctx.save_for_backward(a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], output[0], output[2],
                          a["b_ih"], a["b_hh"])


def _lstm_cell_backward(ctx, grad_hy, grad_cy, _grad_workspace):
    input, hx, cx, w_ih, w_hh, hy, workspace, b_ih, b_hh = ctx.saved_tensors
    args = (input, hx, cx, w_ih, w_hh, b_ih, b_hh)
    if _exact.wanted((grad_hy, grad_cy), args):
        return _exact.backward("lstm_cell", ctx.needs_input_grad, (grad_hy, grad_cy), args)
    g = ops.lstm_cell_backward(grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, hy, workspace)
    grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias = g
    grad_b_ih, grad_b_hh = _bias_grads(ctx, grad_bias, grad_bias)
    return _input_grads(ops.lstm_cell.default, input=grad_input, hx=grad_hx, cx=grad_cx,
                        w_ih=grad_w_ih, w_hh=grad_w_hh, b_ih=grad_b_ih, b_hh=grad_b_hh)


torch.library.register_autograd("rnnkit::lstm_cell", _lstm_cell_backward, setup_context=_lstm_cell_setup)


def _gru_setup(ctx, inputs, output):
    a = _named(ops.gru.default, inputs)
    ctx.train = a.get("train", True)
    _unused_grads_none(ctx, output[2])
    _setup_biases(ctx, a)
    ctx.reverse = a["reverse"]
    ctx.zoneout_p = a.get("zoneout_h_p", 0.0)
    ctx.save_for_backward(a["input"], a["batch_sizes"], a["h0"], a["w_ih"], a["w_hh"], output[0],
                          output[2], a["b_ih"], a["b_hh"], a.get("zoneout_h"))


def _gru_backward(ctx, grad_output, grad_h_n, _grad_workspace):
    _require_train("gru", ctx)
    input, batch_sizes, h0, w_ih, w_hh, output, workspace, b_ih, b_hh, zoneout_h = ctx.saved_tensors
    args = (input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, ctx.reverse, True, zoneout_h,
            ctx.zoneout_p)
    if _exact.wanted((grad_output, grad_h_n), args):
        return _exact.backward("gru", ctx.needs_input_grad, (grad_output, grad_h_n), args)
    g = ops.gru_backward(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output,
                         workspace, ctx.reverse, zoneout_h, ctx.zoneout_p)
    grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = g
    grad_b_ih, grad_b_hh = _bias_grads(ctx, grad_b_ih, grad_b_hh)
    return _input_grads(ops.gru.default, input=grad_input, h0=grad_h0, w_ih=grad_w_ih,
                        w_hh=grad_w_hh, b_ih=grad_b_ih, b_hh=grad_b_hh)


torch.library.register_autograd("rnnkit::gru", _gru_backward, setup_context=_gru_setup)


def _gru_cell_setup(ctx, inputs, output):
    a = _named(ops.gru_cell.default, inputs)
    _unused_grads_none(ctx, output[1])
    _setup_biases(ctx, a)
    ctx.save_for_backward(a["input"], a["hx"], a["w_ih"], a["w_hh"], output[0], output[1],
                          a["b_ih"], a["b_hh"])


def _gru_cell_backward(ctx, grad_hy, _grad_workspace):
    input, hx, w_ih, w_hh, hy, workspace, b_ih, b_hh = ctx.saved_tensors
    args = (input, hx, w_ih, w_hh, b_ih, b_hh)
    if _exact.wanted((grad_hy,), args):
        return _exact.backward("gru_cell", ctx.needs_input_grad, (grad_hy,), args)
    g = ops.gru_cell_backward(grad_hy, input, hx, w_ih, w_hh, hy, workspace)
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = g
    grad_b_ih, grad_b_hh = _bias_grads(ctx, grad_b_ih, grad_b_hh)
    return _input_grads(ops.gru_cell.default, input=grad_input, hx=grad_hx, w_ih=grad_w_ih,
                        w_hh=grad_w_hh, b_ih=grad_b_ih, b_hh=grad_b_hh)


torch.library.register_autograd("rnnkit::gru_cell", _gru_cell_backward, setup_context=_gru_cell_setup)


def _rnn_setup(ctx, inputs, output):
    a = _named(ops.rnn.default, inputs)
    _unused_grads_none(ctx)
    _setup_biases(ctx, a)
    ctx.reverse = a["reverse"]
    ctx.nonlinearity = a["nonlinearity"]
    ctx.zoneout_p = a.get("zoneout_h_p", 0.0)
    ctx.save_for_backward(a["input"], a["batch_sizes"], a["h0"], a["w_ih"], a["w_hh"], output[0],
                          a["b_ih"], a["b_hh"], a.get("zoneout_h"))


def _rnn_backward(ctx, grad_output, grad_h_n):
    input, batch_sizes, h0, w_ih, w_hh, output, b_ih, b_hh, zoneout_h = ctx.saved_tensors
    args = (input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, ctx.nonlinearity, ctx.reverse,
            zoneout_h, ctx.zoneout_p)
    if _exact.wanted((grad_output, grad_h_n), args):
        return _exact.backward("rnn", ctx.needs_input_grad, (grad_output, grad_h_n), args)
    g = ops.rnn_backward(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output,
                         ctx.nonlinearity, ctx.reverse, zoneout_h, ctx.zoneout_p)
    grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias = g
    grad_b_ih, grad_b_hh = _bias_grads(ctx, grad_bias, grad_bias)
    return _input_grads(ops.rnn.default, input=grad_input, h0=grad_h0, w_ih=grad_w_ih,
                        w_hh=grad_w_hh, b_ih=grad_b_ih, b_hh=grad_b_hh)


torch.library.register_autograd("rnnkit::rnn", _rnn_backward, setup_context=_rnn_setup)


def _rnn_cell_setup(ctx, inputs, output):
    a = _named(ops.rnn_cell.default, inputs)
    _setup_biases(ctx, a)
    ctx.nonlinearity = a["nonlinearity"]
    ctx.save_for_backward(a["input"], a["hx"], a["w_ih"], a["w_hh"], output, a["b_ih"], a["b_hh"])


def _rnn_cell_backward(ctx, grad_hy):
    input, hx, w_ih, w_hh, hy, b_ih, b_hh = ctx.saved_tensors
    args = (input, hx, w_ih, w_hh, b_ih, b_hh, ctx.nonlinearity)
    if _exact.wanted((grad_hy,), args):
        return _exact.backward("rnn_cell", ctx.needs_input_grad, (grad_hy,), args)
    g = ops.rnn_cell_backward(grad_hy, input, hx, w_ih, w_hh, hy, ctx.nonlinearity)
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias = g
    grad_b_ih, grad_b_hh = _bias_grads(ctx, grad_bias, grad_bias)
    return _input_grads(ops.rnn_cell.default, input=grad_input, hx=grad_hx, w_ih=grad_w_ih,
                        w_hh=grad_w_hh, b_ih=grad_b_ih, b_hh=grad_b_hh)


torch.library.register_autograd("rnnkit::rnn_cell", _rnn_cell_backward, setup_context=_rnn_cell_setup)


# ---- autocast ---------------------------------------------------------------------------------
# Under torch.autocast(device, dtype) the forward operators run in the autocast dtype, as
# torch.nn.LSTM does: every floating-point tensor argument on that device other than float64
# (input, states, weights, biases) is cast to torch.get_autocast_dtype(device), and the operator
# runs below the autocast key. The casts are ordinary differentiable ops, so gradients reach
# float32 parameters in float32. Registered in Python, at the Autocast<Device> dispatch key (as
# torch.library.register_autocast does, which takes one fixed dtype rather than the autocast
# region's), and as the same operator's Python-dispatcher kernel, which torch.compile and
# torch.export trace; one function serves every device, so the CPU tests cover the CUDA path.
AUTOCAST_OPERATORS = ("lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell", "layernorm_lstm",
                      "layernorm_gru")
AUTOCAST_DEVICES = ("cpu", "cuda")


def _autocast_eligible(t: object, device_type: str) -> bool:
    """torch's autocast rule for casting an argument: a floating-point tensor on the autocast
    device that is not float64."""
    return (isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type == device_type
            and t.dtype != torch.float64)


def autocast_args(args: tuple, device_type: str) -> tuple:
    """args with every eligible tensor cast to device_type's current autocast dtype."""
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(a.to(dtype) if _autocast_eligible(a, device_type) else a for a in args)


def _register_autocast(lib: torch.library.Library, name: str, device_type: str) -> None:
    op = getattr(ops, name).default
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def run(*args):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*autocast_args(args, device_type))

    def kernel(_keyset, *args, **kwargs):
        if kwargs:  # the dispatcher passes every argument by position
            raise RuntimeError(f"rnnkit::{name} under autocast: unexpected keyword arguments "
                               f"{sorted(kwargs)}")
        return run(*args)

    lib.impl(name, kernel, key_name, with_keyset=True)
    op.py_impl(key)(run)


_autocast_library = torch.library.Library("rnnkit", "IMPL")
for _name in AUTOCAST_OPERATORS:
    for _device in AUTOCAST_DEVICES:
        _register_autocast(_autocast_library, _name, _device)
