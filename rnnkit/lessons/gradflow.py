"""Lesson 1: the vanishing gradient, measured. ||dL/dh_t|| against t for RNN, LSTM and GRU.

A loss computed at the end of a sequence reaches an early hidden state only through the
recurrence, by the chain rule (backpropagation through time):

    dL/dh_t = (dh_{t+1}/dh_t)^T dL/dh_{t+1}   (+ the loss's own dependence on h_t, if any)

For a tanh RNN the Jacobian is dh_{t+1}/dh_t = diag(1 - h_{t+1}^2) W_hh, so dL/dh_t is a product
of T - t such factors: it shrinks geometrically when they are contractive. The LSTM's cell state
has the additive path c_{t+1} = f * c_t + i * g, whose Jacobian is diag(f): a forget gate near one
lets the gradient through (the "constant error carousel"); the GRU's h_{t+1} = (1 - z) * n + z * h_t
does the same through z.

The measurement steps the model one cell at a time (rnnkit's fused cells), keeps the gradient of
every h_t (``retain_grad``) and averages ||dL_n/dh_t|| over the sequences n of a batch; the loss is
summed over the sequences, so each sequence's gradient is its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import functional as RF
from ..train.config import TrainConfig
from ..train.errors import UserError
from ..train.plot import save_figure
from ..train.registry import build_model
from ..train.runs import load_run
from ..train.trainer import train

#: Tasks whose loss gradflow knows how to write per sequence (both generate their own data).
GRADFLOW_TASKS = ("adding", "copy")

State = tuple[Tensor, ...]  # (h,) or (h, c), each (N, H)


def hidden_gradient_norms(step: Callable[[Tensor, State], State], inputs: Tensor, state0: State,
                          loss_fn: Callable[[list[Tensor]], Tensor]) -> dict[str, Tensor]:
    """Mean over the batch of ||dL_n/ds_t|| for every state kind s (h, and c for an LSTM).

    step(x_t, state) -> next state, h first; inputs: (T, N, I); state0: the initial state, each
    (N, H); loss_fn(hs) -> (N,) per-sequence losses from the list of the T hidden states h_1..h_T.
    Returns {"h": (T,), "c": (T,) for two-part states}: entry t-1 belongs to the state after
    reading x_t, so the last entry is closest to a loss taken at the end.

    The gradient of a state part is taken as the step hands it on, the other part held fixed:
    what reaches s_t from the next steps and (for h_t) from the loss, whether or not ``step``
    computes h_t from c_t inside. So an LSTM's dL/dc_T is 0 when only h_T is read at the end.
    """
    states, state = [], state0
    for x_t in inputs.unbind(0):
        state = tuple(s.view_as(s) for s in step(x_t, state))  # read by the next step and loss
        for s in state:
            s.retain_grad()
        states.append(state)
    loss_fn([s[0] for s in states]).sum().backward()
    names = ("h", "c")[:len(state0)]
    norms = {}
    for k, name in enumerate(names):
        per_step = []
        for s in states:
            g = s[k].grad if s[k].grad is not None else torch.zeros_like(s[k])
            per_step.append(g.detach().flatten(1).norm(dim=1).mean())
        norms[name] = torch.stack(per_step)
    return norms


@contextlib.contextmanager
def flush_denormals():
    """Flush float32 subnormals (below 1.2e-38) to zero inside the block, then restore torch's
    default. A vanishing gradient passes through them on its way to zero, and on x86 CPUs they are
    many times slower than normal numbers (an LSTM on the adding problem with T = 400 trains five
    times faster with them flushed); values this small change no weight."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


# ---- the models that rnnkit train builds -------------------------------------------------------
def model_step(model) -> tuple[Callable[[Tensor, State], State], int]:
    """(step, state count) for the recurrent layer of a one-layer, one-direction SequenceModel,
    stepped with rnnkit's fused cells on the layer's own weights."""
    rnn = model.rnn
    if rnn.num_layers != 1 or rnn.bidirectional:
        both = ", bidirectional" if rnn.bidirectional else ""
        raise UserError(f"gradflow measures one-layer, one-direction models; this one has "
                        f"{rnn.num_layers} layer(s){both}")
    w = (rnn.weight_ih_l0, rnn.weight_hh_l0, getattr(rnn, "bias_ih_l0", None),
         getattr(rnn, "bias_hh_l0", None))
    if model.cell == "lstm":
        return (lambda x, s: RF.lstm_cell(x, s, *w)), 2
    if model.cell == "gru":
        return (lambda x, s: (RF.gru_cell(x, s[0], *w),)), 1
    return (lambda x, s: (RF.rnn_cell(x, s[0], *w, nonlinearity="tanh"),)), 1


def sequence_losses(model, hs: list[Tensor], y: Tensor) -> Tensor:
    """(N,) loss of each sequence from the hidden states h_1..h_T, as the task's loss computes it
    (squared error of the final output for regression, cross-entropy summed over steps for
    per-step classes, cross-entropy of the final output for per-sequence classes)."""
    if model.spec.per_step:
        logits = model.head(torch.stack(hs))  # (T, N, C)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        return ce.view(y.shape).sum(0)
    out = model.head(hs[-1])  # (N, C)
    if model.spec.output_size == 1:
        return (out.squeeze(-1) - y) ** 2
    return F.cross_entropy(out, y, reduction="none")


def model_gradient_norms(model, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """hidden_gradient_norms of a SequenceModel (in eval mode) on one batch: x (T, N) tokens or
    (T, N, F) features, y the task's targets."""
    model.eval()
    step, kinds = model_step(model)
    inputs = model.embed(x) if model.embed is not None else x
    p = model.rnn.weight_hh_l0
    zeros = torch.zeros(x.shape[1], model.rnn.hidden_size, dtype=p.dtype, device=p.device)
    state0 = tuple(zeros.clone().requires_grad_() for _ in range(kinds))
    return hidden_gradient_norms(step, inputs.detach(), state0,
                                 lambda hs: sequence_losses(model, hs, y))


def initial_model(config: TrainConfig, task):
    """The model exactly as rnnkit.train.train starts it (seeded, before the first step)."""
    torch.manual_seed(config.seed)
    return build_model(task.spec, config)


# ---- the lesson: train (or load) each cell, measure before and after ---------------------------
@dataclass
class Curve:
    """One cell's measurement."""

    cell: str  # rnn | lstm | gru
    run_dir: str  # the run folder the trained weights came from ("" if it was removed)
    seq_len: int  # T, the time steps the model reads (copy: symbols, delay and recall)
    init: dict  # {"h": [T floats], "c": [...] (LSTM)}: at initialisation
    trained: dict  # the same after training
    valid: dict = field(default_factory=dict)  # the trained model's validation metrics


def _measure(run_dir: str, sequences: int) -> Curve:
    config_saved, task, model, _ = load_run(run_dir, which="last", device="cpu")
    if config_saved.task not in GRADFLOW_TASKS:
        raise UserError(f"{run_dir}: gradflow needs an {' or '.join(GRADFLOW_TASKS)} run, this "
                        f"one is {config_saved.task!r}")
    x, y = task.valid.x[:, :sequences], task.valid.y[..., :sequences]
    trained = model_gradient_norms(model, x, y)
    valid = task.evaluate(model, torch.device("cpu"))
    init = model_gradient_norms(initial_model(config_saved, task).eval(), x, y)
    as_lists = lambda d: {k: [float(v) for v in t] for k, t in d.items()}  # noqa: E731
    return Curve(config_saved.cell, run_dir, x.shape[0], as_lists(init), as_lists(trained),
                 valid)


def gradflow(base: TrainConfig, cells: Sequence[str] = ("rnn", "lstm", "gru"),
             runs: Sequence[str] = (), keep: Optional[str] = None, sequences: int = 256,
             echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[Curve]:
    """Train ``base`` once per cell (or load ``runs`` instead) and measure ||dL/dh_t|| at
    initialisation and after training on ``sequences`` validation sequences.

    Trained runs go to ``keep``/<cell> when given, else to a temporary folder removed at the end.
    """
    if runs:
        return [_measure(r, sequences) for r in runs]
    if base.task not in GRADFLOW_TASKS:
        raise UserError(f"--task {base.task}: gradflow trains on {' or '.join(GRADFLOW_TASKS)}")
    root = keep or tempfile.mkdtemp(prefix="rnnkit-gradflow-")
    curves = []
    try:
        for cell in cells:
            config = dataclasses.replace(base, cell=cell, out=os.path.join(root, cell))
            echo(f"training {cell} on {base.task} T={config.resolved().seq_len} "
                 f"({base.steps} steps)")
            with flush_denormals():
                result = train(config, progress=False, echo=lambda s: None)
            if result.interrupted:
                raise UserError(f"interrupted ({result.interrupted}) while training {cell}")
            curve = _measure(config.out, sequences)
            if keep is None:
                curve.run_dir = ""
            curves.append(curve)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return curves


def summary(curves: Sequence[Curve]) -> list[str]:
    """One line per cell: the gradient at the first step relative to the last, before and after
    training (how much of the loss's gradient reaches the start of the sequence)."""
    def ratio(d: dict) -> str:
        first, last = d["h"][0], d["h"][-1]
        if last == 0:
            return "nan"
        return f"{first / last:.3g}" if first > 0 else "0 (underflow)"

    lines = []
    for c in curves:
        shown = [k for k in ("mse", "baseline_mse", "symbol_accuracy") if k in c.valid]
        metric = "  ".join(f"{k} {c.valid[k]:.4g}" for k in shown)
        lines.append(f"{c.cell:<5} T={c.seq_len}  |dL/dh_1| / |dL/dh_T|: init {ratio(c.init)}, "
                     f"trained {ratio(c.trained)}  (valid {metric})")
    return lines


def to_json(curves: Sequence[Curve], base: Optional[TrainConfig], sequences: int) -> dict:
    """The measurement as JSON; ``base`` is the training config shared by the cells (None when
    the runs were loaded: each curve names its run folder)."""
    return {"what": "mean over sequences of ||dL/dh_t||, t = 1..T (the loss is taken at the "
                    "end); c: the LSTM cell state's ||dL/dc_t||",
            "sequences": sequences, "config": base.to_json() if base else None,
            "curves": [dataclasses.asdict(c) for c in curves]}


def plot(curves: Sequence[Curve], path: str) -> None:
    """Two panels (initialisation, trained), log-scale y, one curve per cell (the LSTM's cell
    state dotted). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"rnn": "C3", "lstm": "C0", "gru": "C2"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, when in zip(axes, ("init", "trained")):
        for c in curves:
            d = getattr(c, when)
            t = range(1, len(d["h"]) + 1)
            label = {"rnn": "tanh RNN"}.get(c.cell, c.cell.upper())
            ax.semilogy(t, d["h"], color=colors.get(c.cell), label=f"{label}  ||dL/dh_t||")
            if "c" in d:  # dL/dc_T is 0 when the loss reads only h_T: not drawn on a log axis
                cs = [v if v > 0 else float("nan") for v in d["c"]]
                ax.semilogy(t, cs, ":", color=colors.get(c.cell),
                            label=f"{label}  ||dL/dc_t||")
        ax.set_title("at initialisation" if when == "init" else "after training")
        ax.set_xlabel("time step t (the loss is taken at t = T)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("gradient norm (mean over sequences)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
