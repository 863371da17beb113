"""TrainConfig: every setting of a training run, with its default (the one place defaults live).

Free of torch, so that the command line can show defaults in ``--help`` without importing it.
The names of tasks, cells and implementations are defined here (cells: rnnkit.cells); the
classes behind them are in registry.py and models.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import typing
from dataclasses import dataclass
from typing import Any, Optional

from ..cells import CELLS
from .errors import UserError

#: Every task, with the sequence length used when the config leaves it unset (charlm: BPTT
#: chunk; adding/copy: length; classify: most tokens; tag: unused; seq2seq: most digits).
TASKS = {"charlm": 64, "classify": 400, "tag": 0, "adding": 50, "copy": 20, "seq2seq": 6}

#: The tasks whose runs ``rnnkit export`` writes (not seq2seq: its greedy decoding is a loop
#: around two models), and the formats it writes; train/deploy.py does the work.
EXPORT_TASKS = ("charlm", "classify", "tag", "adding", "copy")
EXPORT_FORMATS = ("onnx", "pt2")

#: The recurrent implementations: rnnkit's fused kernels, torch.nn, rnnkit.reference.
IMPLS = ("rnnkit", "torch", "reference")

#: Every --cell of training, with the cell whose state and gates it has (an LSTM carries (h, c)).
#: The LayerNorm cells are rnnkit.LayerNormLSTM and rnnkit.LayerNormGRU (models.LAYER_CLASSES).
TRAIN_CELLS = {**{c: c for c in CELLS}, "layernorm-lstm": "lstm", "layernorm-gru": "gru"}


def cell_family(cell: str) -> str:
    """The plain cell (in rnnkit.cells.CELLS) whose state and gates ``cell`` has."""
    return TRAIN_CELLS.get(cell, cell)


#: The validation metrics of each task that may choose the best checkpoint, with their direction
#: ("max": higher is better). The first is the task's own, used unless --select-by names
#: another; tasks/seq2seq evaluate() report every one of them.
SELECTION = {
    "charlm": {"loss": "min", "perplexity": "min", "bpc": "min"},
    "classify": {"accuracy": "max", "macro_f1": "max", "loss": "min"},
    "tag": {"accuracy": "max", "macro_f1": "max", "loss": "min"},
    "adding": {"mse": "min", "loss": "min"},
    "copy": {"symbol_accuracy": "max", "loss": "min"},
    "seq2seq": {"exact_match": "max", "token_accuracy": "max", "loss": "min"},
}


def check_select_by(task: str, metric: Optional[str]) -> str:
    """``metric`` (the task's own when None) if ``task`` reports it, else UserError listing
    those it reports."""
    metrics = SELECTION[task]
    if metric is None:
        return next(iter(metrics))
    if metric not in metrics:
        raise UserError(f"--select-by: task {task} reports {', '.join(metrics)}; got {metric!r}")
    return metric


#: Older spellings still accepted (on the command line and in saved config.json files).
IMPL_ALIASES = {"fused": "rnnkit"}


def canonical_impl(name: str) -> str:
    """``name``, with an older spelling (IMPL_ALIASES) replaced by its IMPLS name."""
    return IMPL_ALIASES.get(name, name)


#: Options that may differ from the saved config when resuming (they change neither the model,
#: nor the data, nor the optimisation path up to the saved step).
RESUMABLE = ("steps", "epochs", "eval_every", "device", "threads", "log_every", "impl", "out")

#: The values a field may take, where there is a fixed set (the command line offers the same).
CHOICES = {
    "task": tuple(TASKS),
    "tokens": ("word", "char"),
    "cell": tuple(TRAIN_CELLS),
    "impl": IMPLS,
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16"),
}

#: Bounds of numeric fields: (low, high, low_open, high_open), None for no bound. The command line
#: builds its option types from these; from_json holds a saved config.json to them too.
BOUNDS = {
    "valid_fraction": (0, 1, True, True),
    "seq_len": (1, None, False, False),  # a saved tag run holds 0: unused by that task
    "hidden_size": (1, None, False, False),
    "num_layers": (1, None, False, False),
    "embed_size": (1, None, False, False),
    "dropout": (0, 1, False, True),
    "weight_drop": (0, 1, False, True),
    "variational_dropout": (0, 1, False, True),
    "zoneout": (0, 1, False, True),
    "forget_bias": (-1e3, 1e3, False, False),  # written into float32 biases; sigmoid is flat far sooner
    "chrono": (3, None, False, False),
    "batch_size": (1, None, False, False),
    "steps": (1, None, False, False),
    "epochs": (0, 1e15, True, False),  # times the steps per epoch, it must stay a finite count
    "lr": (0, 1e30, True, False),  # AdamW computes in float32 (max 3.4e38); 1e30 still diverges cleanly
    "min_lr_ratio": (0, 1, False, False),
    "warmup_steps": (0, None, False, False),
    "weight_decay": (0, 1, False, False),  # AdamW scales weights by 1 - lr * wd each step: past 1, decay flips and grows them
    "grad_clip": (0, None, False, False),
    "eval_every": (1, None, False, False),
    "log_every": (1, None, False, False),
    "threads": (1, 4096, False, False),  # torch's thread pools take an int
    "seed": (0, 2**32 - 1, False, False),
}


@dataclass
class TrainConfig:
    """Everything needed to rebuild a run's model and data pipeline (saved as config.json)."""

    # task and data
    task: str = "charlm"  # charlm | classify | tag | adding | copy | seq2seq
    data: Optional[str] = None  # text (charlm), CSV/TSV (classify), CoNLL (tag); None: bundled
    valid_data: Optional[str] = None  # separate validation file (classify, tag); else split
    valid_fraction: float = 0.1  # share held out for validation (charlm: the last 10%)
    text_column: str = "text"  # classify: column holding the text
    label_column: str = "label"  # classify: column holding the label
    tokens: str = "word"  # classify: "word" or "char" tokens
    seq_len: Optional[int] = None  # charlm: BPTT chunk; adding/copy: length; classify: max
    #                                tokens; seq2seq: most digits of a number (3..9)
    # model
    cell: str = "lstm"  # lstm | gru | rnn | layernorm-lstm | layernorm-gru
    impl: str = "rnnkit"  # rnnkit (fused kernels) | torch (torch.nn) | reference (plain loop)
    hidden_size: int = 384  # hidden units per direction and layer
    num_layers: int = 1  # stacked recurrent layers
    embed_size: int = 64  # width of the symbol embedding (tasks with symbol inputs)
    dropout: float = 0.0  # on embeddings, between layers, before the head
    bidirectional: Optional[bool] = None  # None: True for tag, False otherwise (never for charlm)
    weight_drop: float = 0.0  # DropConnect on the recurrent weights W_hh (rnnkit layers)
    variational_dropout: float = 0.0  # one mask per sequence on every recurrent layer's input
    zoneout: float = 0.0  # zoneout of the hidden state (LSTM: of the cell state too)
    forget_bias: Optional[float] = None  # initial forget-gate bias (LSTM f, GRU z); None: as torch
    chrono: Optional[int] = None  # chrono initialisation's T_max (gated cells); None: off
    # optimisation
    batch_size: int = 64  # sequences (charlm: parallel streams) per step and process
    steps: Optional[int] = None  # optimiser steps; None: from epochs, or 500 by default
    epochs: Optional[float] = None  # passes over the training data (used when steps is None)
    lr: float = 5e-3  # peak learning rate
    min_lr_ratio: float = 0.05  # final learning rate as a fraction of lr (cosine floor)
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    weight_decay: float = 0.01  # AdamW decoupled weight decay on matrices
    betas: tuple = (0.9, 0.99)  # AdamW moment decay rates
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping; --grad-clip inf says so)
    # bookkeeping
    eval_every: int = 250  # validate (and save the last checkpoint) every this many steps
    select_by: Optional[str] = None  # validation metric choosing best.safetensors; None: the
    #                                  task's own (SELECTION)
    log_every: int = 10  # training-loss records in metrics.jsonl every this many steps
    seed: int = 1337  # seeds weights, dropout and data order
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch CPU threads; None: torch's default
    precision: str = "auto"  # fp32 | bf16 (autocast forward; float32 weights) | auto: chosen at
    #                          the start (train/precision.py), and the choice saved
    out: Optional[str] = None  # run folder; None: runs/<task>-<date>-<time>

    def resolved(self) -> "TrainConfig":
        """A copy with task-dependent defaults filled in."""
        c = dataclasses.replace(self, impl=canonical_impl(self.impl))
        if c.seq_len is None:
            c.seq_len = TASKS.get(c.task, 100)
        if c.bidirectional is None:
            c.bidirectional = c.task == "tag"
        if c.task in SELECTION:
            c.select_by = check_select_by(c.task, c.select_by)
        if c.forget_bias is not None and c.chrono is not None:
            raise UserError("--forget-bias and --chrono both set the forget gate's bias; give one")
        if (c.forget_bias is not None or c.chrono is not None) and cell_family(c.cell) == "rnn":
            raise UserError(f"--forget-bias / --chrono need a gated cell (lstm, gru, ...); the "
                            f"Elman RNN (--cell {c.cell}) has no forget gate")
        if c.task == "charlm" and c.bidirectional:
            raise UserError("--bidirectional makes no sense for a language model (--task charlm)")
        if c.task == "charlm" and c.valid_data:
            raise UserError("--valid-data: charlm validates on the end of --data (--valid-fraction)"
                            "; join the two texts, or drop --valid-data")
        if c.out is None:
            c.out = os.path.join("runs", time.strftime(f"{c.task}-%Y%m%d-%H%M%S"))
        if not c.out.strip():
            raise UserError("--out: expected a folder name, got ''")
        # absolute, so that a run folder means the same files from any working folder
        c.data, c.valid_data = (os.path.abspath(p) if p else p for p in (c.data, c.valid_data))
        c.betas = tuple(c.betas)
        return c

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: Any, source: str = "config.json") -> "TrainConfig":
        """The config saved as ``d``; UserError naming ``source``, the field, what was expected
        and what came, for an unknown field, a value of the wrong type or one out of range."""
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected an object of settings, got {_shown(d)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"{source}: unknown field(s) {', '.join(unknown)} (written by a "
                            "newer rnnkit?)")
        if isinstance(d.get("impl"), str):  # run folders written before "fused" became "rnnkit"
            d = {**d, "impl": canonical_impl(d["impl"])}
        if "precision" not in d:  # run folders written before --precision trained in float32
            d = {**d, "precision": "fp32"}
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
            expected = _problem(name, hints[name], value, d)
            if expected:
                raise UserError(f"{source}: field {name!r}: expected {expected}, got "
                                f"{_shown(value)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ---- checking a saved config ---------------------------------------------------------------------
def field_type(tp) -> type:
    """int for int and Optional[int], and so on."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp


def _is(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # JSON writes 1.0 as 1 in hand edits: accept integers
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def _in_bounds(value: float, bounds: tuple) -> bool:
    low, high, low_open, high_open = bounds
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return math.isfinite(value) and above and below  # NaN fails every comparison anyway


def _describe(kind: type, bounds: Optional[tuple]) -> str:
    noun = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            tuple: "a list"}.get(kind, kind.__name__)
    if not bounds:
        return noun
    low, high, low_open, high_open = bounds
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"{noun} {'>' if low_open else '>='} {low}"
    return f"{noun} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _problem(name: str, tp, value: Any, d: dict) -> Optional[str]:
    """What ``value`` of field ``name`` (annotated ``tp``) should have been, or None if fine."""
    optional = type(None) in typing.get_args(tp)
    kind = field_type(tp)
    bounds = BOUNDS.get(name)
    if name == "seq_len" and d.get("task") == "tag":
        bounds = (0, None, False, False)
    if name == "seed":  # runs saved before seeds were bounded may hold negative ones (they work)
        bounds = (-(2**32), 2**32 - 1, False, False)
    expected = _describe(kind, bounds)
    if name in CHOICES:
        expected = "one of " + ", ".join(json.dumps(c) for c in CHOICES[name])
    if name == "select_by" and d.get("task") in SELECTION:
        expected = "one of " + ", ".join(json.dumps(m) for m in SELECTION[d["task"]])
    if name == "betas":
        expected = "a list of two numbers in [0, 1)"
    if optional:
        expected = "true, false or null" if kind is bool else expected + " or null"
    if value is None:
        return None if optional else expected
    if not _is(kind, value):
        return expected
    if name in CHOICES and value not in CHOICES[name]:
        return expected
    if name == "select_by" and d.get("task") in SELECTION and value not in SELECTION[d["task"]]:
        return expected
    if bounds and not _in_bounds(value, bounds):
        return expected
    if name == "betas" and not (len(value) == 2 and all(
            _is(float, b) and _in_bounds(b, (0, 1, False, True)) for b in value)):
        return expected
    return None


def _shown(value: Any) -> str:
    """A value as it appears in the JSON file, with its JSON type."""
    kind = ("null" if value is None else "true/false" if isinstance(value, bool)
            else "a string" if isinstance(value, str) else "a list" if isinstance(value, list)
            else "an object" if isinstance(value, dict) else "a number")
    text = json.dumps(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"
