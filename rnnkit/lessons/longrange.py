"""Lesson 2: long-range dependencies as a paper's table. Each cell is trained at each sequence
length with the same budget (steps, hidden size, learning rate, seed) by rnnkit.train (float32
subnormals flushed to zero, see gradflow.flush_denormals), and its final validation score is set
beside the score of a model that learned nothing.

adding  mean squared error on the sum of the two marked numbers; always predicting 1.0 (the mean
        of the sum) scores about 1/6
copy    accuracy on the copied symbols; guessing scores 1/8 (eight symbols)

With ``chrono``, the gated cells start from chrono initialisation (Tallec & Ollivier, 2018) with
T_max the length of the task's sequences (``chrono_t_max``). With validations before the end
(``eval_every`` below ``steps``), each row also records the first step at which the task counts
as solved (``SOLVED``); with ``until_solved`` a run stops there, so that the table shows what
solving each length costs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..train import checkpoint as C
from ..train.config import TrainConfig, cell_family
from ..train.errors import UserError
from ..train.trainer import train
from .gradflow import flush_denormals

#: What each task's table reports: (metric key in the validation metrics, its name, higher is
#: better).
METRICS = {"adding": ("mse", "test MSE", False), "copy": ("symbol_accuracy", "symbol accuracy",
                                                         True)}
CELL_NAMES = {"rnn": "tanh RNN", "lstm": "LSTM", "gru": "GRU", "layernorm-lstm": "LayerNorm LSTM",
              "layernorm-gru": "LayerNorm GRU"}

#: When a task counts as solved: adding: test MSE at most 0.01 (the baseline is about 1/6);
#: copy: at least 99% of the symbols recalled. (metric key, threshold).
SOLVED = {"adding": ("mse", 0.01), "copy": ("symbol_accuracy", 0.99)}


def chrono_t_max(task: str, seq_len: int) -> int:
    """Chrono initialisation's T_max for ``task`` at ``seq_len``: the whole sequence (copy: the
    ten symbols, the delay, the ten recalled)."""
    return seq_len + 20 if task == "copy" else seq_len


def solved(task: str, metrics: dict) -> bool:
    key, threshold = SOLVED[task]
    value = metrics[key]
    return value >= threshold if METRICS[task][2] else value <= threshold


def solved_at(run_dir: str, task: str) -> Optional[int]:
    """The first validation step of the run at which the task was solved, or None."""
    for record in C.read_metrics(run_dir):
        if record.get("split") == "valid" and solved(task, record):
            return int(record["step"])
    return None


@dataclass
class Row:
    """One trained model of the table."""

    task: str  # adding | copy
    cell: str  # rnn | lstm | gru
    seq_len: int  # sequence length (copy: the delay between the symbols and their recall)
    metric: str  # key of the reported score in ``valid``
    value: float  # the final validation score
    baseline: float  # the score of a model that learned nothing (adding: predict 1.0; copy: 1/8)
    seconds: float  # wall time of the training (set-up and evaluations included)
    valid: dict = field(default_factory=dict)  # every final validation metric
    solved_at: Optional[int] = None  # first validation step that met SOLVED; None: never (or
    #                                  no validation before the end)
    chrono: Optional[int] = None  # chrono initialisation's T_max; None: torch's initialisation
    steps: Optional[int] = None  # steps trained (fewer than the budget's when stopped as solved)


def baseline(task: str, valid: dict) -> float:
    """The no-learning score: adding: MSE of always predicting 1.0 on the same validation set;
    copy: chance accuracy over the eight symbols."""
    return valid["baseline_mse"] if task == "adding" else 1 / 8


def _when_solved(config: TrainConfig) -> Callable[[int], bool]:
    """A should_stop for train(): True after the first validation that solves the task."""
    return lambda step: (step % config.eval_every == 0
                         and solved_at(config.out, config.task) is not None)


def longrange(base: TrainConfig, lengths: Sequence[int], cells: Sequence[str],
              keep: Optional[str] = None,
              echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr), *,
              chrono: bool = False, until_solved: bool = False) -> list[Row]:
    """Train ``base`` for every (length, cell) and return one Row each, in that order. Run folders
    go to ``keep``/<task>-<cell>-T<length> when given, else to a temporary folder removed after.
    ``chrono``: gated cells start from chrono initialisation (T_max: chrono_t_max).
    ``until_solved``: a run stops at the first validation that solves the task (its row then
    holds that validation); otherwise every run takes all of ``base.steps``."""
    if base.task not in METRICS:
        raise UserError(f"--task {base.task}: the table is for {' or '.join(METRICS)}")
    key = METRICS[base.task][0]
    root = keep or tempfile.mkdtemp(prefix="rnnkit-longrange-")
    rows = []
    try:
        for T in lengths:
            for cell in cells:
                t_max = (chrono_t_max(base.task, T) if chrono and cell_family(cell) != "rnn"
                         else None)
                config = dataclasses.replace(base, cell=cell, seq_len=T, chrono=t_max,
                                             out=os.path.join(root, f"{base.task}-{cell}-T{T}"))
                started = time.perf_counter()
                stop = _when_solved(config) if until_solved else None
                try:
                    with flush_denormals():
                        result = train(config, progress=False, echo=lambda s: None,
                                       should_stop=stop)
                except UserError as e:
                    if not str(e).startswith("training diverged"):
                        raise
                    row = Row(base.task, cell, T, key, math.nan, math.nan,
                              time.perf_counter() - started, {"error": str(e)})
                    echo(f"{base.task} T={T} {cell}: {e}")
                    rows.append(row)
                    continue
                if result.interrupted and not (until_solved and result.interrupted == "stopped"):
                    raise UserError(f"interrupted ({result.interrupted}) while training {cell} "
                                    f"at T={T}; the table is incomplete")
                valid = result.valid
                row = Row(base.task, cell, T, key, valid[key], baseline(base.task, valid),
                          time.perf_counter() - started, valid,
                          solved_at(config.out, base.task), t_max, result.step)
                when = "" if row.solved_at is None else f", solved at step {row.solved_at}"
                echo(f"{base.task} T={T} {cell}: {key} {row.value:.4f} (baseline "
                     f"{row.baseline:.4f}{when}) in {row.seconds:.0f} s")
                rows.append(row)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def _fmt(value: float, task: str) -> str:
    if math.isnan(value):
        return "diverged"
    if task == "copy":
        return f"{value:.1%}"
    return f"{value:.4f}" if value >= 1e-3 else f"{value:.1e}"


def markdown(rows: Sequence[Row], base: TrainConfig) -> str:
    """The table: one row per cell, one column per length, and the no-learning baseline below."""
    task = rows[0].task
    lengths = list(dict.fromkeys(r.seq_len for r in rows))
    cells = list(dict.fromkeys(r.cell for r in rows))
    name, higher = METRICS[task][1], METRICS[task][2]
    at = {(r.cell, r.seq_len): r for r in rows}
    head = "T" if task == "adding" else "delay T"
    lines = [f"| {name} ({'higher' if higher else 'lower'} is better) | "
             + " | ".join(f"{head} = {T}" for T in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for cell in cells:
        lines.append(f"| {CELL_NAMES[cell]} | "
                     + " | ".join(_fmt(at[cell, T].value, task) if (cell, T) in at else "-"
                                  for T in lengths) + " |")
    what = "always predict 1.0" if task == "adding" else "guess (1/8)"
    base_at = {T: next((r.baseline for r in rows if r.seq_len == T
                        and not math.isnan(r.baseline)), math.nan) for T in lengths}
    lines.append(f"| baseline: {what} | "
                 + " | ".join(_fmt(base_at[T], task) if not math.isnan(base_at[T]) else "-"
                              for T in lengths) + " |")
    if any(r.solved_at is not None for r in rows):
        key, threshold = SOLVED[task]
        lines.append(f"| solved ({key} {'>=' if higher else '<='} {threshold:g}) at step | "
                     + " | ".join(", ".join(f"{CELL_NAMES[r.cell]} {r.solved_at}" for r in rows
                                            if r.seq_len == T and r.solved_at is not None)
                                  or "-" for T in lengths) + " |")
    lines.append("")
    init = ("chrono initialisation of the gated cells (T_max = sequence length), "
            if any(r.chrono for r in rows) else "")
    clip = (f"gradient norm clipped at {base.grad_clip:g}" if base.grad_clip > 0
            else "no gradient clipping")
    stopped = any(r.steps is not None and r.steps < base.steps for r in rows)
    lines.append(f"{task}, {base.impl} kernels, hidden size {base.hidden_size}, {base.steps} "
                 f"steps of batch {base.batch_size}, lr {base.lr:g} (AdamW, warm-up "
                 f"{base.warmup_steps}, cosine), {clip}, {init}seed {base.seed}; "
                 + ("each run stopped at the first validation that solved the task; its score "
                    if stopped else "the final model's score ")
                 + "on the task's 1024 validation sequences.")
    return "\n".join(lines) + "\n"


def to_json(rows: Sequence[Row], base: TrainConfig) -> dict:
    return {"task": rows[0].task if rows else base.task, "config": base.to_json(),
            "rows": [dataclasses.asdict(r) for r in rows]}
