"""TrainConfig: every setting of a training run, with its default (the one place defaults live).

Free of torch, so that the command line can show defaults in ``--help`` without importing it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Optional

from .data import UserError

#: Options that may differ from the saved config when resuming (they change neither the model,
#: nor the data, nor the optimisation path up to the saved step).
RESUMABLE = ("steps", "epochs", "eval_every", "device", "threads", "log_every", "impl", "out")


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
    cell: str = "lstm"  # lstm | gru | rnn
    impl: str = "fused"  # fused (rnnkit) | torch (torch.nn) | reference (plain PyTorch loop)
    hidden_size: int = 384  # hidden units per direction and layer
    num_layers: int = 1  # stacked recurrent layers
    embed_size: int = 64  # width of the symbol embedding (tasks with symbol inputs)
    dropout: float = 0.0  # on embeddings, between layers, before the head
    bidirectional: Optional[bool] = None  # None: True for tag, False otherwise (never for charlm)
    # optimisation
    batch_size: int = 64  # sequences (charlm: parallel streams) per step and process
    steps: Optional[int] = None  # optimiser steps; None: from epochs, or 500 by default
    epochs: Optional[float] = None  # passes over the training data (used when steps is None)
    lr: float = 5e-3  # peak learning rate
    min_lr_ratio: float = 0.05  # final learning rate as a fraction of lr (cosine floor)
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    weight_decay: float = 0.01  # AdamW decoupled weight decay on matrices
    betas: tuple = (0.9, 0.99)  # AdamW moment decay rates
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    # bookkeeping
    eval_every: int = 250  # validate (and save the last checkpoint) every this many steps
    log_every: int = 10  # training-loss records in metrics.jsonl every this many steps
    seed: int = 1337  # seeds weights, dropout and data order
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch CPU threads; None: torch's default
    out: Optional[str] = None  # run folder; None: runs/<task>-<date>-<time>

    def resolved(self) -> "TrainConfig":
        """A copy with task-dependent defaults filled in."""
        from .tasks import DEFAULT_SEQ_LEN

        c = dataclasses.replace(self)
        if c.seq_len is None:
            c.seq_len = DEFAULT_SEQ_LEN.get(c.task, 100)
        if c.bidirectional is None:
            c.bidirectional = c.task == "tag"
        if c.task == "charlm" and c.bidirectional:
            raise UserError("--bidirectional makes no sense for a language model (--task charlm)")
        if c.out is None:
            c.out = os.path.join("runs", time.strftime(f"{c.task}-%Y%m%d-%H%M%S"))
        c.betas = tuple(c.betas)
        return c

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"config.json: unknown field(s) {', '.join(unknown)} (written by a "
                            "newer rnnkit?)")
        return cls(**d)
