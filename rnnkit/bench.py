"""Timing helpers shared by ``rnnkit bench`` and the scripts in ``benchmarks/``.

How a benchmark runs (``run_case``):

1. Every implementation is built on the same weights (those of a seeded ``torch.nn`` module).
2. Before any timing, each implementation's outputs (and, in training mode, the gradients of the
   input, the initial states and every parameter) are compared with the plain-PyTorch reference
   computed in float64. The bound is relative to how far the reference itself lands in the
   benchmark dtype:
   ``max|impl - ref64| <= 4 * max|ref_dtype - ref64| + 50 * eps * (1 + max|ref64|)``.
   An implementation that fails the check, or raises, is reported with the reason and not timed.
3. Warm-up calls (these also calibrate how many calls make one sample, and absorb compilation),
   then interleaved repeats A B C A B C ... so that drift in the machine's load hits all alike.
   CPU samples use ``time.perf_counter``; CUDA samples use CUDA events with synchronisation.
4. A pseudo-implementation, ``matmul``, runs exactly the matrix products that the layer does
   (input projection, one recurrent product per step and, in training, the two backward products
   of each) with ``torch.mm``, interleaved with the others: its rate is the machine's
   matrix-multiply rate for these shapes, measured in the same run. Each implementation's
   achieved GFLOP/s counts those same matrix-product FLOPs (pointwise work is not counted), so
   ``fraction = achieved / matmul rate`` says how close it comes to "only the matrix products".
5. Peak memory of one more (untimed) call: growth of the resident set on CPU (the kernel's
   high-water mark, reset through /proc/self/clear_refs after malloc_trim), or
   ``torch.cuda.max_memory_allocated`` growth on GPU.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

CELLS = ("lstm", "gru", "rnn")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
MODES = ("inference", "training")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
#: Every implementation rnnkit bench knows, in the order they are timed.
IMPLS = ("rnnkit", "torch", "torch-nocudnn", "cell-loop", "reference", "reference-jit",
         "reference-compile")
MATMUL = "matmul"
GPU_ONLY = {"torch-nocudnn"}


class BenchError(ValueError):
    """A benchmark that cannot run as asked (bad name, no GPU, too big); one-line message."""


# ---- what to run ------------------------------------------------------------------------------
@dataclass
class Case:
    """One layer shape. Sequences are time-major: input (T, N, I)."""

    cell: str = "lstm"          # lstm, gru or rnn (tanh)
    seq_len: int = 100          # T: time steps (the longest sequence when packed)
    batch: int = 64             # N: sequences in the batch
    input_size: int = 512       # I: features of the input
    hidden_size: int = 512      # H: features of the hidden state
    num_layers: int = 1         # L: stacked layers
    bidirectional: bool = False
    min_len: Optional[int] = None  # packed input, lengths spread evenly over [min_len, seq_len]
    dtype: str = "float32"      # one of DTYPES
    device: str = "cpu"         # cpu or cuda

    @property
    def packed(self) -> bool:
        return self.min_len is not None

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def lengths(self) -> list[int]:
        """Sequence lengths, longest first (all seq_len when not packed)."""
        if not self.packed:
            return [self.seq_len] * self.batch
        lo, hi = self.min_len, self.seq_len
        if self.batch == 1:
            return [hi]
        return sorted((round(hi - (hi - lo) * k / (self.batch - 1)) for k in range(self.batch)),
                      reverse=True)

    def batch_sizes(self) -> list[int]:
        """Rows active at each step (torch's PackedSequence.batch_sizes)."""
        lengths = self.lengths()
        return [sum(1 for n in lengths if n > t) for t in range(self.seq_len)]

    @property
    def label(self) -> str:
        s = f"{self.cell} T={self.seq_len} N={self.batch} I={self.input_size} H={self.hidden_size}"
        if self.num_layers > 1:
            s += f" L={self.num_layers}"
        if self.bidirectional:
            s += " bidir"
        if self.packed:
            s += f" packed {self.min_len}-{self.seq_len}"
        if self.dtype != "float32":
            s += f" {self.dtype}"
        return s


@dataclass
class Settings:
    """How to time. Defaults in one place; the CLI and benchmarks/ override some."""

    impls: Sequence[str] = ("rnnkit", "torch", "cell-loop", "reference", "reference-jit",
                            "reference-compile")  # torch-nocudnn is added on GPU
    modes: Sequence[str] = MODES  # inference (no grad) and/or training (forward + backward)
    warmup: int = 2               # untimed calls per implementation before the repeats
    repeats: int = 7              # interleaved samples per implementation
    min_sample_s: float = 0.02    # a sample repeats the call until it lasts at least this long
    check: bool = True            # compare with the float64 reference before timing
    memory: bool = True           # measure peak memory with one extra call
    matmul: bool = True           # time the layer's matrix products alone (the machine's limit)
    seed: int = 0                 # weights and inputs


@dataclass
class Result:
    """One implementation in one mode on one case."""

    case: str
    cell: str
    mode: str
    impl: str
    status: str                   # ok, wrong, error, skipped
    detail: str = ""              # why not ok; or the largest error seen by the check
    median_ms: Optional[float] = None
    min_ms: Optional[float] = None
    max_ms: Optional[float] = None
    q1_ms: Optional[float] = None
    q3_ms: Optional[float] = None
    samples: int = 0
    calls_per_sample: int = 0
    speedup_vs_torch: Optional[float] = None
    gflops: Optional[float] = None          # matrix-product GFLOP/s achieved
    fraction_of_matmul: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    device: str = ""                        # cpu, or the GPU's name
    threads: int = 0                        # torch.get_num_threads() while timing
    shape: dict = field(default_factory=dict)


# ---- the machine --------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """What produced the numbers: CPU, threads, GPU, versions, load."""
    import rnnkit

    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rnnkit": rnnkit.__version__,
        "platform": platform.platform(),
    }
    try:
        info["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        b = rnnkit.build_info()
        info["rnnkit_cpu_capability"] = b["cpu_capability"]
        info["rnnkit_backends"] = b["backends"]
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        info["rnnkit_build"] = f"unavailable: {error}"
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def machine_slug(device: str) -> str:
    """A short file-name-safe name for this machine, e.g. ``cpu-intel-xeon-2t``."""
    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"cpu {cpu_name()} {torch.get_num_threads()}t"
    words = "".join(c.lower() if c.isalnum() else " " for c in name).split()
    drop = {"r", "tm", "processor", "cpu", "core", "nvidia", "with"}
    words = [w for w in words if w not in drop]
    return "-".join((["cpu"] if device != "cuda" else ["cuda"]) + words)[:60]


def check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise BenchError(f"unknown device {device!r}; expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("CUDA was asked for, but no GPU is visible here "
                         "(torch.cuda.is_available() is False); use --device cpu")


def validate_impls(names: Sequence[str]) -> list[str]:
    """The names, checked; a BenchError listing the valid ones otherwise."""
    bad = [n for n in names if n not in IMPLS]
    if bad:
        raise BenchError(f"unknown implementation {', '.join(map(repr, bad))}; valid: "
                         f"{', '.join(IMPLS)}")
    return list(dict.fromkeys(names))


# ---- memory estimate ----------------------------------------------------------------------------
def estimate_bytes(case: Case, modes: Sequence[str], check: bool = True) -> int:
    """A rough upper estimate of the peak memory of benchmarking this case.

    Counts parameters and their gradients, the input and outputs, and in training the activations
    kept for backward by the most hungry implementation (the eager reference, about 3G + 6 values
    of width H per row, step, layer and direction); the float64 check doubles it.
    """
    size = torch.empty((), dtype=DTYPES[case.dtype]).element_size()
    G, H, I = GATES[case.cell], case.hidden_size, case.input_size
    D, L, T, N = case.directions, case.num_layers, case.seq_len, case.batch
    params = sum(G * H * ((I if layer == 0 else D * H) + H + 2) for layer in range(L)) * D
    rows = T * N
    values = 4 * params + rows * (I + D * H) * 2 + G * H * rows
    if "training" in modes:
        values += rows * L * D * H * (3 * G + 6)
    total = values * size
    if check:
        total += values * 8  # the float64 reference
    return int(total)


def available_bytes(device: str) -> Optional[int]:
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(case: Case, modes: Sequence[str], check: bool = True) -> None:
    need = estimate_bytes(case, modes, check)
    have = available_bytes(case.device)
    if have is not None and need > 0.8 * have:
        raise BenchError(
            f"{case.label} would need about {need / 2**30:.1f} GiB ({', '.join(modes)}, estimated "
            f"before allocating); {case.device} has {have / 2**30:.1f} GiB available: use a "
            f"smaller --seq-len, --batch-size or --hidden-size")


# ---- FLOPs and the matrix products of a layer ------------------------------------------------
def layer_products(case: Case, mode: str) -> list[tuple[int, int, int, int]]:
    """The matrix products (M, K, N, count) that one call makes: (M, K) @ (K, N), count times.

    Per layer and direction: the input projection of the whole sequence, (rows, I_l) @ (I_l, GH),
    and one recurrent product per step, (n_t, H) @ (H, GH). Training adds, for each product,
    the gradient of each operand: (M, N) @ (N, K) and (K, M) @ (M, N).
    """
    G, H = GATES[case.cell], case.hidden_size
    steps = case.batch_sizes()
    rows = sum(steps)
    fwd: list[tuple[int, int, int, int]] = []
    for layer in range(case.num_layers):
        width = case.input_size if layer == 0 else case.directions * H
        for _ in range(case.directions):
            fwd.append((rows, width, G * H, 1))
            counts: dict[int, int] = {}
            for n in steps:
                counts[n] = counts.get(n, 0) + 1
            fwd += [(n, H, G * H, c) for n, c in counts.items() if n > 0]
    if mode == "inference":
        return fwd
    out = list(fwd)
    for m, k, n, c in fwd:
        out.append((m, n, k, c))  # d(input) = d(out) @ W
        out.append((k, m, n, c))  # d(W) = input^T @ d(out), accumulated over steps
    return out


def layer_flops(case: Case, mode: str) -> int:
    """Matrix-product FLOPs of one call (2 M K N per product; pointwise work not counted)."""
    return sum(2 * m * k * n * c for m, k, n, c in layer_products(case, mode))


def matmul_runner(case: Case, mode: str) -> Callable[[], None]:
    """A callable that does exactly the layer's matrix products with torch.mm."""
    dev, dt = case.device, DTYPES[case.dtype]
    gen = torch.Generator(device="cpu").manual_seed(1)
    work = []
    for m, k, n, c in layer_products(case, mode):
        a = torch.randn(m, k, generator=gen).to(dev, dt)
        b = torch.randn(n, k, generator=gen).to(dev, dt).t()  # weights are stored (out, in)
        out = torch.empty(m, n, device=dev, dtype=dt)
        work.append((a, b, out, c))

    def run() -> None:
        for a, b, out, c in work:
            for _ in range(c):
                torch.mm(a, b, out=out)

    return run


# ---- implementations --------------------------------------------------------------------------
def _torch_module(case: Case, seed: int) -> torch.nn.Module:
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
    from . import functional as RF
    from . import reference as R

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
            return R._run_layer(layer(cells[next(counter)]), xx, bs, st, reverse)

        out, finals = RF.stack_layers(one, data, batch_sizes, states,
                                      [None] * len(cells), case.num_layers, case.bidirectional,
                                      0.0, False)
        return out, finals

    return run


def _reference_call(module: torch.nn.Module, case: Case) -> Callable:
    from . import reference as R

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
    from . import functional as RF
    from . import reference as R

    import torch._dynamo as dynamo

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
        return R._run_layer(fn, x, bs, st, reverse)

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
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        fn = torch.jit.script({"lstm": _jit_lstm_layer, "gru": _jit_gru_layer,
                               "rnn": _jit_rnn_layer}[case.cell])
    params = _layer_params(module, case)
    from . import functional as RF

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


def build_impl(name: str, module: torch.nn.Module, case: Case) -> Callable:
    """The implementation's call, (x, states) -> (output, [final states]), on module's weights."""
    if name == "torch":
        return _module_call(module, case.cell)
    if name == "torch-nocudnn":
        if case.device != "cuda":
            raise BenchError("torch-nocudnn runs on GPU only")
        return _no_cudnn(_module_call(module, case.cell))
    if name == "rnnkit":
        import rnnkit

        fast = rnnkit.from_torch(module)
        _share_parameters(fast, module)
        return _module_call(fast, case.cell)
    if name == "cell-loop":
        return _cell_loop_call(module, case)
    if name == "reference":
        return _reference_call(module, case)
    if name == "reference-jit":
        return _scripted_reference_call(module, case)
    if name == "reference-compile":
        return _compiled_reference_call(module, case)
    raise BenchError(f"unknown implementation {name!r}; valid: {', '.join(IMPLS)}")


# ---- inputs, one call, checks -------------------------------------------------------------------
@dataclass
class Inputs:
    x: Any                    # (T, N, I) tensor or PackedSequence
    leaf: Tensor              # the tensor whose gradient is checked (x, or the packed data)
    states: list[Tensor]      # h0 (and c0): (L*D, N, H)
    grad_out: Tensor          # the output's upstream gradient
    grad_states: list[Tensor]


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed + 1)
    T, N, H = case.seq_len, case.batch, case.hidden_size
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    x = rnd(T, N, case.input_size)
    nstates = 2 if case.cell == "lstm" else 1
    states = [0.5 * rnd(case.num_layers * case.directions, N, H) for _ in range(nstates)]
    if case.packed:
        from torch.nn.utils.rnn import pack_padded_sequence

        packed = pack_padded_sequence(x, torch.tensor(case.lengths()), enforce_sorted=True)
        leaf = packed.data.contiguous()
        x = torch.nn.utils.rnn.PackedSequence(leaf, packed.batch_sizes)
        rows = leaf.shape[0]
        grad_out = rnd(rows, case.directions * H)
    else:
        leaf = x
        grad_out = rnd(T, N, case.directions * H)
    grad_states = [rnd(*s.shape) for s in states]
    return Inputs(x, leaf, states, grad_out, grad_states)


def _with_leaf(inputs: Inputs, requires_grad: bool) -> Inputs:
    """Fresh leaf tensors (so that gradients start from nothing)."""
    leaf = inputs.leaf.detach().requires_grad_(requires_grad)
    x = leaf if not hasattr(inputs.x, "batch_sizes") else torch.nn.utils.rnn.PackedSequence(
        leaf, inputs.x.batch_sizes)
    states = [s.detach().requires_grad_(requires_grad) for s in inputs.states]
    return Inputs(x, leaf, states, inputs.grad_out, inputs.grad_states)


def call_once(run: Callable, inputs: Inputs, mode: str, params: Sequence[Tensor]):
    """One call in the mode: returns outputs (and, in training, gradients)."""
    if mode == "inference":
        with torch.no_grad():
            out, finals = run(inputs.x, inputs.states)
        return [out, *finals]
    for p in params:
        p.grad = None
    out, finals = run(inputs.x, inputs.states)
    torch.autograd.backward([out, *finals], [inputs.grad_out, *inputs.grad_states])
    return [out, *finals]


def _trainer(run: Callable, inputs: Inputs, mode: str, params: Sequence[Tensor]) -> Callable:
    if mode == "inference":
        def call() -> None:
            with torch.no_grad():
                run(inputs.x, inputs.states)
        return call
    fresh = _with_leaf(inputs, True)

    def call() -> None:
        for p in params:
            p.grad = None
        fresh.leaf.grad = None
        for s in fresh.states:
            s.grad = None
        out, finals = run(fresh.x, fresh.states)
        torch.autograd.backward([out, *finals], [inputs.grad_out, *inputs.grad_states])

    return call


def _collect(run: Callable, inputs: Inputs, mode: str, module: torch.nn.Module) -> list[Tensor]:
    """Outputs, final states and (training) gradients of input, states and parameters."""
    params = list(module.parameters())
    fresh = _with_leaf(inputs, mode == "training")
    outs = call_once(run, fresh, mode, params)
    outs = [o.detach() for o in outs]
    if mode == "training":
        grads = [fresh.leaf.grad, *[s.grad for s in fresh.states], *[p.grad for p in params]]
        outs += [torch.zeros(()) if g is None else g.detach() for g in grads]
    return outs


def check_against_reference(run: Callable, module: torch.nn.Module, case: Case, mode: str,
                            inputs: Inputs, oracle: tuple[list[Tensor], list[Tensor]]
                            ) -> tuple[bool, str]:
    """Compares an implementation with the float64 reference; returns (ok, detail)."""
    ref64, ref_dt = oracle
    got = _collect(run, inputs, mode, module)
    eps = torch.finfo(DTYPES[case.dtype]).eps
    worst = 0.0
    names = _result_names(case, mode, len(got))
    for name, g, r64, rdt in zip(names, got, ref64, ref_dt):
        if g.shape != r64.shape:
            return False, f"{name}: shape {tuple(g.shape)}, expected {tuple(r64.shape)}"
        g64 = g.double().cpu()
        if not torch.isfinite(g64).all():
            return False, f"{name}: not finite"
        err = (g64 - r64).abs().max().item() if g64.numel() else 0.0
        ref_err = (rdt.double().cpu() - r64).abs().max().item() if r64.numel() else 0.0
        scale = r64.abs().max().item() if r64.numel() else 0.0
        bound = 4 * ref_err + 50 * eps * (1 + scale)
        if err > bound:
            return False, f"{name}: max error {err:.3g} > bound {bound:.3g}"
        worst = max(worst, err / (1 + scale))
    return True, f"max rel. error {worst:.2g}"


def _result_names(case: Case, mode: str, count: int) -> list[str]:
    names = ["output", "h_n"] + (["c_n"] if case.cell == "lstm" else [])
    if mode == "training":
        names += ["grad input", "grad h0"] + (["grad c0"] if case.cell == "lstm" else [])
    names += [f"grad param {k}" for k in range(count - len(names))]
    return names


def oracle(module: torch.nn.Module, case: Case, mode: str, inputs: Inputs):
    """The reference's results in float64 and in the benchmark dtype."""
    import copy

    out = []
    for dtype in (torch.float64, DTYPES[case.dtype]):
        m = copy.deepcopy(module).to(dtype)
        ins = Inputs(
            torch.nn.utils.rnn.PackedSequence(inputs.leaf.to(dtype), inputs.x.batch_sizes)
            if hasattr(inputs.x, "batch_sizes") else inputs.leaf.to(dtype),
            inputs.leaf.to(dtype), [s.to(dtype) for s in inputs.states],
            inputs.grad_out.to(dtype), [g.to(dtype) for g in inputs.grad_states])
        out.append([t.double().cpu() for t in _collect(_reference_call(m, case), ins, mode, m)])
    return out[0], out[1]


# ---- timing ------------------------------------------------------------------------------------
def _timer(device: str) -> Callable[[Callable[[], None], int], float]:
    """Returns time(fn, number) -> seconds per call."""
    if device == "cuda":
        def time_cuda(fn: Callable[[], None], number: int) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(number):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / number
        return time_cuda

    def time_cpu(fn: Callable[[], None], number: int) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number

    return time_cpu


def interleaved(fns: dict[str, Callable[[], None]], device: str = "cpu", warmup: int = 2,
                repeats: int = 7, min_sample_s: float = 0.02
                ) -> dict[str, tuple[list[float], int]]:
    """Times each callable: warm-up, then ``repeats`` rounds of A B C ...; each sample runs a
    callable ``number`` times (calibrated in warm-up so a sample lasts about min_sample_s).
    Returns name -> (seconds per call of each sample, number)."""
    timer = _timer(device)
    numbers = {}
    for name, fn in fns.items():
        t = 0.0
        for _ in range(max(1, warmup)):
            t = timer(fn, 1)
        numbers[name] = max(1, min(1000, math.ceil(min_sample_s / max(t, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timer(fn, numbers[name]))
    return {name: (samples[name], numbers[name]) for name in fns}


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, min, max and quartiles, in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if len(ms) >= 4:
        q = statistics.quantiles(ms, n=4)
        q1, q3 = q[0], q[2]
    else:
        q1, q3 = ms[0], ms[-1]
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
            "q1_ms": q1, "q3_ms": q3}


# ---- memory ------------------------------------------------------------------------------------
def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_mb(fn: Callable[[], None], device: str) -> Optional[float]:
    """Peak memory growth of one call: max allocated on GPU; on CPU, resident-set growth (the
    high-water mark reset through /proc/self/clear_refs). None where it cannot be measured."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    if base is None or peak is None:
        return None
    return max(0, peak - base) / 1024


# ---- one case, all implementations ---------------------------------------------------------------
def default_impls(device: str, impls: Optional[Sequence[str]] = None) -> list[str]:
    names = list(impls) if impls is not None else list(Settings().impls)
    if impls is None and device == "cuda":
        names.insert(2, "torch-nocudnn")
    return names


def run_case(case: Case, settings: Settings, impls: Optional[Sequence[str]] = None,
             log: Callable[[str], None] = lambda s: None,
             extra: Optional[dict[str, Callable[[Tensor, list[Tensor]], Any]]] = None
             ) -> list[Result]:
    """Checks and times every implementation on one case, in each mode. ``extra`` adds
    implementations by name (a call (x, states) -> (output, [final states]) on the torch.nn
    module's parameters), used by tests to plant a wrong one."""
    check_device(case.device)
    if case.cell not in CELLS:
        raise BenchError(f"unknown cell {case.cell!r}; valid: {', '.join(CELLS)}")
    if case.dtype not in DTYPES:
        raise BenchError(f"unknown dtype {case.dtype!r}; valid: {', '.join(DTYPES)}")
    names = validate_impls(default_impls(case.device, impls))
    check_fits(case, settings.modes, settings.check)
    dtype = DTYPES[case.dtype]
    module = _torch_module(case, settings.seed).to(case.device, dtype)
    params = list(module.parameters())
    inputs = make_inputs(case, dtype, case.device, settings.seed)
    shape = asdict(case)
    results: list[Result] = []
    for mode in settings.modes:
        log(f"{case.label} [{mode}]")
        ref = oracle(module, case, mode, inputs) if settings.check else None
        calls: dict[str, Callable[[], None]] = {}
        mode_results: dict[str, Result] = {}
        candidates: list[tuple[str, Callable]] = []
        for name in names:
            r = Result(case.label, case.cell, mode, name, "ok", shape=shape)
            mode_results[name] = r
            if name in GPU_ONLY and case.device != "cuda":
                r.status, r.detail = "skipped", "GPU only"
                continue
            try:
                candidates.append((name, build_impl(name, module, case)))
            except Exception as error:  # noqa: BLE001 - reported in the table
                r.status, r.detail = "error", _one_line(error)
        for name, fn in (extra or {}).items():
            mode_results[name] = Result(case.label, case.cell, mode, name, "ok", shape=shape)
            candidates.append((name, fn))
        for name, run in candidates:
            r = mode_results[name]
            try:
                if ref is not None:
                    ok, detail = check_against_reference(run, module, case, mode, inputs, ref)
                    r.detail = detail
                    if not ok:
                        r.status = "wrong"
                        log(f"  {name}: WRONG ({detail}); not timed")
                        continue
                calls[name] = _trainer(run, inputs, mode, params)
            except Exception as error:  # noqa: BLE001 - reported in the table
                r.status, r.detail = "error", _one_line(error)
                log(f"  {name}: error ({r.detail}); not timed")
        if settings.matmul:
            calls[MATMUL] = matmul_runner(case, mode)
            mode_results[MATMUL] = Result(case.label, case.cell, mode, MATMUL, "ok",
                                          detail="the layer's matrix products alone (torch.mm)",
                                          shape=shape)
        timed = interleaved(calls, case.device, settings.warmup, settings.repeats,
                            settings.min_sample_s) if calls else {}
        flops = layer_flops(case, mode)
        for name, (seconds, number) in timed.items():
            r = mode_results[name]
            for k, v in summarize(seconds).items():
                setattr(r, k, v)
            r.samples, r.calls_per_sample = len(seconds), number
            r.gflops = flops / (r.median_ms / 1000) / 1e9
            if settings.memory:
                r.peak_mem_mb = peak_memory_mb(calls[name], case.device)
        _relate(mode_results)
        where = torch.cuda.get_device_name() if case.device == "cuda" else "cpu"
        for r in mode_results.values():
            r.device, r.threads = where, torch.get_num_threads()
        results += list(mode_results.values())
    return results


def _relate(results: dict[str, Result]) -> None:
    """Speed-up vs torch and fraction of the matmul rate, from the medians."""
    torch_r, mm = results.get("torch"), results.get(MATMUL)
    for r in results.values():
        if r.median_ms is None:
            continue
        if torch_r is not None and torch_r.median_ms is not None and r.impl != MATMUL:
            r.speedup_vs_torch = torch_r.median_ms / r.median_ms
        if mm is not None and mm.gflops:
            r.fraction_of_matmul = r.gflops / mm.gflops


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


# ---- output ------------------------------------------------------------------------------------
def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: Sequence[Result], markdown: bool = False) -> str:
    """A readable table: one row per case, mode and implementation."""
    head = ["case", "mode", "impl", "median ms", "min-max ms", "vs torch", "GFLOP/s",
            "of matmul", "peak MB", "status"]
    rows = []
    for r in results:
        spread = ("-" if r.min_ms is None else f"{r.min_ms:.3g}-{r.max_ms:.3g}")
        status = r.status if r.status == "ok" else f"{r.status}: {r.detail}"
        rows.append([r.case, r.mode, r.impl, _fmt(r.median_ms, ".4g"), spread,
                     "-" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.2f}x",
                     _fmt(r.gflops, ".1f"),
                     "-" if r.fraction_of_matmul is None else f"{100 * r.fraction_of_matmul:.0f}%",
                     _fmt(r.peak_mem_mb, ".1f"), status])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def write_json(path: str, results: Sequence[Result], meta: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": [asdict(r) for r in results]}, f, indent=1)
        f.write("\n")


CSV_FIELDS = ["case", "cell", "mode", "impl", "status", "median_ms", "min_ms", "max_ms", "q1_ms",
              "q3_ms", "samples", "calls_per_sample", "speedup_vs_torch", "gflops",
              "fraction_of_matmul", "peak_mem_mb", "device", "threads", "detail"]


def write_csv(path: str, results: Sequence[Result]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(asdict(r))


def write_plot(path: str, results: Sequence[Result]) -> None:
    """Bars (median ms per implementation and mode) for one case; lines (ms against hidden size,
    one per implementation, a panel per mode and batch size) for several."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise BenchError("--plot needs matplotlib: pip install matplotlib (or rnnkit[plot])") \
            from error
    timed = [r for r in results if r.median_ms is not None]
    cases = list(dict.fromkeys(r.case for r in timed))
    modes = list(dict.fromkeys(r.mode for r in timed))
    impls = list(dict.fromkeys(r.impl for r in timed))
    if len(cases) <= 1:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(modes))
        for k, mode in enumerate(modes):
            ys = [next((r.median_ms for r in timed if r.impl == i and r.mode == mode), 0)
                  for i in impls]
            ax.bar([x + k * width for x in range(len(impls))], ys, width, label=mode)
        ax.set_xticks([x + width * (len(modes) - 1) / 2 for x in range(len(impls))], impls,
                      rotation=30, ha="right")
        ax.set_ylabel("median ms per call")
        ax.set_title(cases[0] if cases else "no timed results")
        ax.legend()
    else:
        batches = sorted({r.shape.get("batch") for r in timed})
        fig, axes = plt.subplots(len(modes), len(batches), squeeze=False,
                                 figsize=(4 * len(batches), 3.5 * len(modes)))
        for a, mode in enumerate(modes):
            for b, n in enumerate(batches):
                ax = axes[a][b]
                for impl in impls:
                    pts = sorted((r.shape["hidden_size"], r.median_ms) for r in timed
                                 if r.impl == impl and r.mode == mode and r.shape.get("batch") == n)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=impl)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("hidden size")
                ax.set_ylabel("median ms")
                ax.set_title(f"{mode}, N={n}")
        axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- suites ------------------------------------------------------------------------------------
@dataclass
class Suite:
    """A named set of cases, with the implementations and repeats that fit in a few minutes."""

    name: str
    about: str
    cases: Callable[[str, str], list[Case]]   # (cell, device) -> cases
    impls: Optional[Sequence[str]] = None     # None: Settings' default
    repeats: int = 7
    gpu_only: bool = False


def _fastrnns(cell: str, device: str) -> list[Case]:
    return [Case(cell, 100, 64, 512, 512, device=device)]


def _small_batch(cell: str, device: str) -> list[Case]:
    return [Case(cell, 100, n, 256, 256, device=device) for n in (1, 4, 16)]


def _sweep(cell: str, device: str) -> list[Case]:
    return [Case(cell, 50, n, h, h, device=device) for n in (1, 16, 64)
            for h in (128, 256, 512, 1024)]


def _packed(cell: str, device: str) -> list[Case]:
    return [Case(cell, 100, 64, 256, 256, min_len=25, device=device)]


def _long(cell: str, device: str) -> list[Case]:
    return [Case(cell, 1024, 16, 768, 768, dtype="float16", device=device)]


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("fastrnns", "T=100 N=64 I=H=512, 1 layer (PyTorch's RNN benchmark defaults)",
          _fastrnns, repeats=5),
    Suite("small-batch", "T=100 I=H=256, N in 1, 4, 16", _small_batch),
    Suite("sweep", "T=50, N in {1, 16, 64} x I=H in {128, 256, 512, 1024}", _sweep,
          impls=("rnnkit", "torch", "cell-loop"), repeats=5),
    # reference-compile is left out: one compiled graph per distinct batch size (76 here)
    Suite("packed", "N=64 I=H=256, lengths spread over 25-100 (PackedSequence)", _packed,
          impls=("rnnkit", "torch", "torch-nocudnn", "cell-loop", "reference", "reference-jit")),
    Suite("long", "N=16 T=1024 I=H=768, float16 (GPU only)", _long,
          impls=("rnnkit", "torch", "torch-nocudnn", "cell-loop", "reference"), repeats=5,
          gpu_only=True),
]}


def suite_cases(name: str, cell: str, device: str) -> tuple[Suite, list[Case]]:
    if name not in SUITES:
        raise BenchError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    suite = SUITES[name]
    if suite.gpu_only and device != "cuda":
        raise BenchError(f"suite {name!r} runs on GPU only ({suite.about}); use --device cuda")
    return suite, suite.cases(cell, device)


def header(meta: dict[str, Any]) -> str:
    """The lines above a table: what machine, what software, how busy."""
    where = meta.get("gpu") or meta["cpu"]
    load = meta.get("loadavg_1_5_15")
    s = (f"# {meta['device']}: {where}, {meta['threads']} threads of {meta['cpu_count']} cores; "
         f"torch {meta['torch']}, rnnkit {meta['rnnkit']}, python {meta['python']}")
    if load:
        s += f"; load average {load[0]:.2f}"
    return s


# ---- results files -----------------------------------------------------------------------------
def markdown_report(title: str, results: Sequence[Result], meta: dict[str, Any],
                    notes: Sequence[str] = ()) -> str:
    """A Markdown page: the machine, the versions and the command above the table."""
    lines = [f"# {title}", "", f"- command: `{meta.get('command', '?')}`",
             f"- date (UTC): {meta['date_utc']}",
             f"- machine: {meta.get('gpu') or meta['cpu']}, {meta['cpu_count']} cores, "
             f"{meta['threads']} torch threads, device {meta['device']}",
             f"- versions: torch {meta['torch']}, rnnkit {meta['rnnkit']}, python {meta['python']}"
             + (f", CUDA {meta['cuda']}, cuDNN {meta['cudnn']}" if meta.get("cuda") else ""),
             ]
    if meta.get("loadavg_1_5_15"):
        lines.append("- load average at start (1, 5, 15 min): "
                     + ", ".join(f"{x:.2f}" for x in meta["loadavg_1_5_15"]))
    if meta.get("loadavg_end"):
        lines.append("- load average at end: " + ", ".join(f"{x:.2f}" for x in meta["loadavg_end"]))
    lines += [f"- {n}" for n in notes]
    lines += ["", "Medians of interleaved repeats; `vs torch` is torch's median / this one's; "
              "GFLOP/s counts the layer's matrix products only; `of matmul` is that rate over the "
              "rate of the same products done alone with torch.mm in the same run (the `matmul` "
              "rows); peak MB is resident-set growth (CPU) or max allocated (GPU) over one call.",
              "", table(results, markdown=True), ""]
    return "\n".join(lines)


def results_dir() -> str:
    """benchmarks/results/ of the source tree this module is in (created if missing)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(here, "benchmarks", "results")
    os.makedirs(path, exist_ok=True)
    return path
