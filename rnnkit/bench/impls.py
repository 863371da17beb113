"""The implementations rnnkit bench times, each built on the weights of one seeded torch.nn module:
rnnkit, torch (and torch without cuDNN), a loop over torch.nn cells, rnnkit.reference (eager,
TorchScript, torch.compile), and for float16/bfloat16 torch and rnnkit under torch.autocast. Each
is a call (x or PackedSequence, states) -> (output, finals).
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
from torch import Tensor

from .. import functional as RF
from .. import reference as R
from ..nn import from_torch
from .case import IMPLS, BenchError, Case


def torch_module(case: Case, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[case.cell]
    return cls(case.input_size, case.hidden_size, num_layers=case.num_layers,
               bidirectional=case.bidirectional)


def _module_call(module: torch.nn.Module, cell: str) -> Callable:
    """(x or PackedSequence, states) -> (output data, [final states])."""

    def run(x, states):
        out, hn = module(x, tuple(states) if cell == "lstm" else states[0])
        out = out.data if hasattr(out, "batch_sizes") else out
        return out, (list(hn) if cell == "lstm" else [hn])

    return run


def _cell_loop_call(module: torch.nn.Module, case: Case) -> Callable:
    """A Python loop over torch.nn.LSTMCell / GRUCell / RNNCell (one cell per layer-direction)."""
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[case.cell]
    cells = []
    for layer in range(case.num_layers):
        for suffix in ("", "_reverse")[:case.directions]:
            width = case.input_size if layer == 0 else case.directions * case.hidden_size
            cell = cls(width, case.hidden_size).to(next(module.parameters()))
            for base in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                # share the layer's parameters, so gradients land on the same tensors
                setattr(cell, base, getattr(module, f"{base}_l{layer}{suffix}"))
            cells.append(cell)

    def layer(cell):
        if case.cell == "lstm":
            def step(xt, s):
                return cell(xt, (s[0], s[1]))
        else:
            def step(xt, s):
                return (cell(xt, s[0]),)
        return step

    def run(x, states):
        data, batch_sizes = (x.data, x.batch_sizes) if hasattr(x, "batch_sizes") else (x, None)
        counter = iter(range(len(cells)))

        def one(xx, bs, st, params, reverse):
            return R.run_layer(layer(cells[next(counter)]), xx, bs, st, reverse)

        out, finals = RF.stack_layers(one, data, batch_sizes, states,
                                      [None] * len(cells), case.num_layers, case.bidirectional,
                                      0.0, False)
        return out, finals

    return run


def reference_call(module: torch.nn.Module, case: Case) -> Callable:
    cls = {"lstm": R.LSTM, "gru": R.GRU, "rnn": R.RNN}[case.cell]
    ref = cls(case.input_size, case.hidden_size, num_layers=case.num_layers,
              bidirectional=case.bidirectional)
    ref = ref.to(next(module.parameters()))
    _share_parameters(ref, module)
    return _module_call(ref, case.cell)


def _share_parameters(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Make dst use src's parameter tensors (same names), so weights and gradients are shared."""
    for name, p in src.named_parameters():
        setattr(dst, name, p)


def _compiled_reference_call(module: torch.nn.Module, case: Case) -> Callable:
    """rnnkit.reference's cell step under torch.compile, driven by a Python loop over time.

    Compiling the step (not the unrolled sequence) keeps compile time to seconds; the loop, the
    state plumbing and stacking are rnnkit.reference's own.
    """
    import torch._dynamo as dynamo  # heavy: loaded only when reference-compile runs

    # A fresh start for each case and mode: dynamo keys its cache on the step's code object, so
    # graphs of earlier cases would count against the recompile limit, past which it falls back
    # to eager silently and the numbers would no longer be torch.compile's. Packed input needs
    # one graph per distinct batch size (and per grad mode), so the limit is raised to fit.
    dynamo.reset()
    limit = 2 * len(set(case.batch_sizes())) + 8
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, key):
            setattr(dynamo.config, key, max(getattr(dynamo.config, key), limit))
    step = torch.compile({"lstm": R.lstm_cell, "gru": R.gru_cell, "rnn": R.rnn_cell}[case.cell],
                         dynamic=False)
    params = _layer_params(module, case)

    def layer(x, bs, st, p, reverse):
        w_ih, w_hh, b_ih, b_hh = p
        if case.cell == "lstm":
            fn = lambda xt, s: step(xt, s[0], s[1], w_ih, w_hh, b_ih, b_hh)  # noqa: E731
        else:
            fn = lambda xt, s: (step(xt, s[0], w_ih, w_hh, b_ih, b_hh),)  # noqa: E731
        return R.run_layer(fn, x, bs, st, reverse)

    def run(x, states):
        data, batch_sizes = (x.data, x.batch_sizes) if hasattr(x, "batch_sizes") else (x, None)
        return RF.stack_layers(layer, data, batch_sizes, states, params, case.num_layers,
                               case.bidirectional, 0.0, False)

    return run


def _layer_params(module: torch.nn.Module, case: Case) -> list[tuple[Tensor, ...]]:
    out = []
    for layer in range(case.num_layers):
        for suffix in ("", "_reverse")[:case.directions]:
            out.append(tuple(getattr(module, f"{b}_l{layer}{suffix}")
                             for b in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    return out


# TorchScript-able reference: the same equations as rnnkit.reference, written with the types
# TorchScript needs. Input in packed form (P, I) with batch_sizes (T,), padded being the case of
# equal lengths; one layer in one direction.
def _jit_lstm_layer(x: Tensor, batch_sizes: list[int], h: Tensor, c: Tensor, w_ih: Tensor,
                    w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
                    reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    xs = torch.split(x, batch_sizes)
    outs: list[Tensor] = [x] * len(xs)
    order = list(range(len(xs)))
    if reverse:
        order.reverse()
    for t in order:
        n = batch_sizes[t]
        gates = (xs[t] @ w_ih.t() + b_ih + h[:n] @ w_hh.t() + b_hh).chunk(4, 1)
        i = torch.sigmoid(gates[0])
        f = torch.sigmoid(gates[1])
        g = torch.tanh(gates[2])
        o = torch.sigmoid(gates[3])
        c_next = f * c[:n] + i * g
        h_next = o * torch.tanh(c_next)
        h = torch.cat([h_next, h[n:]], 0)
        c = torch.cat([c_next, c[n:]], 0)
        outs[t] = h_next
    return torch.cat(outs, 0), h, c


def _jit_gru_layer(x: Tensor, batch_sizes: list[int], h: Tensor, w_ih: Tensor, w_hh: Tensor,
                   b_ih: Tensor, b_hh: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    xs = torch.split(x, batch_sizes)
    outs: list[Tensor] = [x] * len(xs)
    order = list(range(len(xs)))
    if reverse:
        order.reverse()
    for t in order:
        n = batch_sizes[t]
        hp = h[:n]
        xg = (xs[t] @ w_ih.t() + b_ih).chunk(3, 1)
        hg = (hp @ w_hh.t() + b_hh).chunk(3, 1)
        r = torch.sigmoid(xg[0] + hg[0])
        z = torch.sigmoid(xg[1] + hg[1])
        nn_ = torch.tanh(xg[2] + r * hg[2])
        h_next = (1 - z) * nn_ + z * hp
        h = torch.cat([h_next, h[n:]], 0)
        outs[t] = h_next
    return torch.cat(outs, 0), h


def _jit_rnn_layer(x: Tensor, batch_sizes: list[int], h: Tensor, w_ih: Tensor, w_hh: Tensor,
                   b_ih: Tensor, b_hh: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    xs = torch.split(x, batch_sizes)
    outs: list[Tensor] = [x] * len(xs)
    order = list(range(len(xs)))
    if reverse:
        order.reverse()
    for t in order:
        n = batch_sizes[t]
        h_next = torch.tanh(xs[t] @ w_ih.t() + b_ih + h[:n] @ w_hh.t() + b_hh)
        h = torch.cat([h_next, h[n:]], 0)
        outs[t] = h_next
    return torch.cat(outs, 0), h


def _scripted_reference_call(module: torch.nn.Module, case: Case) -> Callable:
    """The reference equations under TorchScript (time loop inside the script)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        fn = torch.jit.script({"lstm": _jit_lstm_layer, "gru": _jit_gru_layer,
                               "rnn": _jit_rnn_layer}[case.cell])
    params = _layer_params(module, case)
    def run(x, states):
        if hasattr(x, "batch_sizes"):
            data, sizes = x.data, [int(b) for b in x.batch_sizes]
            flat, unflat = data, lambda y: y
        else:
            data, sizes = x, [x.shape[1]] * x.shape[0]
            flat = x.reshape(-1, x.shape[-1])
            unflat = lambda y: y.view(x.shape[0], x.shape[1], -1)  # noqa: E731

        def layer(xx, bs, st, p, reverse):
            xx = xx if xx.dim() == 2 else xx.reshape(-1, xx.shape[-1])
            res = fn(xx, sizes, *st, *p, reverse)
            return res[0], tuple(res[1:])

        out, finals = RF.stack_layers(layer, flat, None, states, params, case.num_layers,
                                      case.bidirectional, 0.0, False)
        return unflat(out), finals

    return run


def _no_cudnn(run: Callable) -> Callable:
    def wrapped(x, states):
        with torch.backends.cudnn.flags(enabled=False):
            return run(x, states)

    return wrapped


def _hand_over(weight: Tensor, param: Tensor) -> None:
    """An autocast peer's float32 weight gradient, moved to the benchmark module's parameter."""
    param.grad = weight.grad.to(param.dtype)
    weight.grad = None


def _autocast_call(module: torch.nn.Module, case: Case, ours: bool) -> Callable:
    """torch.nn (or rnnkit's) module in float32, called under torch.autocast to the dtype of
    ``module`` (float16 or bfloat16): how mixed-precision training runs it. Its gradients reach
    the float32 weights; a hook hands each on to ``module``'s parameter of the same name, in that
    dtype, where the check reads every implementation's (the handing over is timed too)."""
    dtype = next(module.parameters()).dtype
    master = copy.deepcopy(module).float()
    if ours:
        master = from_torch(master)
    own = dict(module.named_parameters())
    for name, weight in master.named_parameters():
        weight.register_post_accumulate_grad_hook(lambda w, p=own[name]: _hand_over(w, p))
    call = _module_call(master, case.cell)

    def run(x, states):
        with torch.autocast(case.device, dtype=dtype):
            return call(x, states)

    return run


def build_impl(name: str, module: torch.nn.Module, case: Case) -> Callable:
    """The implementation's call, (x, states) -> (output, [final states]), on module's weights."""
    if name == "torch":
        return _module_call(module, case.cell)
    if name == "torch-nocudnn":
        if case.device != "cuda":
            raise BenchError("torch-nocudnn runs on GPU only")
        return _no_cudnn(_module_call(module, case.cell))
    if name == "rnnkit":
        fast = from_torch(module)
        _share_parameters(fast, module)
        return _module_call(fast, case.cell)
    if name == "cell-loop":
        return _cell_loop_call(module, case)
    if name == "reference":
        return reference_call(module, case)
    if name == "reference-jit":
        return _scripted_reference_call(module, case)
    if name == "reference-compile":
        return _compiled_reference_call(module, case)
    if name in ("torch-autocast", "rnnkit-autocast"):
        return _autocast_call(module, case, ours=name == "rnnkit-autocast")
    raise BenchError(f"unknown implementation {name!r}; valid: {', '.join(IMPLS)}")
