"""Tasks and models by name: the one place that maps ``--task`` to its class.

The names themselves, with their default sequence lengths, are config.TASKS (free of torch, for
the command line); this maps each to the class that implements it.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from .config import TASKS, TrainConfig
from .errors import UserError
from .models import LayerOptions, ModelSpec, SequenceModel
from .seq2seq import NumberWords, Seq2Seq
from .task import Task
from .tasks import Adding, CharLM, Classify, Copy, Tag

#: The class of every task in config.TASKS, by name.
TASK_CLASSES: dict[str, type[Task]] = {
    cls.name: cls for cls in (CharLM, Classify, Tag, Adding, Copy, NumberWords)}


def build_task(config: TrainConfig, rank: int = 0, world: int = 1,
               meta: Optional[dict] = None, read_data: bool = True) -> Task:
    """The task named by ``config.task``; ``meta`` (a saved vocab.json) fixes the vocabularies.
    ``rank`` of ``world`` processes picks this process's share of the training data. With
    ``meta`` and not ``read_data``, charlm holds its vocabulary only (for sampling)."""
    if config.task not in TASK_CLASSES:
        raise UserError(f"unknown task {config.task!r}; expected one of {', '.join(TASKS)}")
    if not read_data and meta is not None and config.task == CharLM.name:
        return CharLM.vocabulary_only(config, meta)
    return TASK_CLASSES[config.task](config, rank, world, meta)


def build_model(spec: ModelSpec, config: TrainConfig, inference: bool = False) -> nn.Module:
    """A SequenceModel (or, for a seq2seq spec, a Seq2Seq) from a TrainConfig (cell, impl, sizes
    and the layer options). ``inference``: for evaluation only, without the training-only
    dropouts of the layer (which other implementations lack)."""
    cls = Seq2Seq if spec.seq2seq else SequenceModel
    return cls(spec, config.cell, config.impl, config.hidden_size, config.num_layers,
               config.embed_size, config.dropout, bool(config.bidirectional),
               LayerOptions.of(config, inference))
