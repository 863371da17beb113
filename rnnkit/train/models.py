"""Models around one recurrent layer whose implementation is chosen by name.

``impl`` picks the class of the recurrent layer: ``rnnkit`` (rnnkit's fused kernels; ``fused``
is the older spelling), ``torch`` (torch.nn) or ``reference`` (rnnkit.reference, a plain-PyTorch
loop). All three have the same parameter names and shapes, so a state dict saved with one loads
into the others. registry.build_model picks this model or seq2seq's by the task's spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import footprint
from .. import nn as rnn
from .. import reference
from ..cells import CELLS
from .config import IMPLS, canonical_impl
from .errors import UserError

#: The layer module of each implementation (each has RNN, LSTM and GRU).
LAYERS = {"rnnkit": rnn, "torch": nn, "reference": reference}


def recurrent_class(impl: str, cell: str) -> type:
    """The layer class for ``impl`` in IMPLS (or an alias of one) and ``cell`` in CELLS."""
    if canonical_impl(impl) not in IMPLS:
        raise ValueError(f"impl: expected one of {', '.join(IMPLS)}, got {impl!r}")
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {cell!r}")
    return getattr(LAYERS[canonical_impl(impl)], cell.upper())


@dataclass
class ModelSpec:
    """What a task needs from the model (set by the task, not by the user)."""

    vocab_size: int  # number of input symbols (embedding rows); 0 for real-valued inputs
    input_features: int  # width of real-valued inputs when vocab_size == 0
    output_size: int  # classes (or 1 for regression)
    per_step: bool  # True: one output per time step; False: one per sequence (from h_n)
    pad_index: Optional[int] = None  # padding symbol of the inputs, if any
    seq2seq: bool = False  # True: encoder-decoder (seq2seq.py); output_size: target symbols


class SequenceModel(nn.Module):
    """Embedding (or real-valued input) -> recurrent layer -> dropout -> linear head.

    Time-major: tokens (T, N) int64 or features (T, N, F); ``lengths`` (N,) for variable-length
    batches, which go through the layer as a PackedSequence. Returns (outputs, h_n) where outputs
    is (T, N, C) if the spec is per_step, else (N, C) from the last layer's final state.
    """

    def __init__(self, spec: ModelSpec, cell: str, impl: str, hidden_size: int, num_layers: int,
                 embed_size: int, dropout: float, bidirectional: bool) -> None:
        super().__init__()
        self.spec = spec
        self.cell = cell
        self.bidirectional = bidirectional
        if spec.vocab_size > 0:
            self.embed = nn.Embedding(spec.vocab_size, embed_size, padding_idx=spec.pad_index)
            width = embed_size
        else:
            self.embed = None
            width = spec.input_features
        layer = recurrent_class(impl, cell)
        self.rnn = layer(width, hidden_size, num_layers=num_layers,
                         dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        self.drop = nn.Dropout(dropout)
        directions = 2 if bidirectional else 1
        self.head = nn.Linear(directions * hidden_size, spec.output_size)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None, hx=None):
        h = self.embed(x) if self.embed is not None else x
        h = self.drop(h)
        if lengths is not None:
            packed = pack_padded_sequence(h, lengths.cpu(), enforce_sorted=False)
            out, hn = self.rnn(packed, hx)
        else:
            out, hn = self.rnn(h, hx)
        if self.spec.per_step:
            if isinstance(out, PackedSequence):
                out, _ = pad_packed_sequence(out, total_length=x.shape[0])
            return self.head(self.drop(out)), hn
        last = hn[0] if isinstance(hn, tuple) else hn  # (D * layers, N, H)
        d = 2 if self.bidirectional else 1
        final = torch.cat(list(last[-d:]), dim=-1)  # (N, D * H)
        return self.head(self.drop(final)), hn


def detach_state(hn):
    """The hidden state without its graph (for truncated backpropagation through time)."""
    if isinstance(hn, tuple):
        return tuple(h.detach() for h in hn)
    return hn.detach()


def estimate_bytes(spec: ModelSpec, config, training: bool) -> int:
    """A rough upper estimate of the peak memory (float32) of training (or evaluating) the model
    of ``spec`` and ``config`` on one batch of ``seq_len x batch_size`` rows: the recurrent layer
    by rnnkit.footprint (bench's estimate), the embedding and the head with their gradients and
    optimiser moments, and the logits (twice for seq2seq's encoder and decoder)."""
    directions = 2 if config.bidirectional else 1
    rows = max(1, config.seq_len or 1) * config.batch_size
    width = config.embed_size if spec.vocab_size > 0 else spec.input_features
    values = footprint.layer_values(config.cell, width, config.hidden_size, config.num_layers,
                                    directions, rows, training)
    ends = spec.vocab_size * config.embed_size + (directions * config.hidden_size + 1) \
        * spec.output_size
    values += 4 * ends + 3 * rows * spec.output_size
    return 4 * values * (2 if spec.seq2seq else 1)


def check_fits(spec: ModelSpec, config, device: torch.device, training: bool) -> None:
    """UserError, before anything is allocated, when the model would not fit in ``device``'s
    free memory, with the estimate and what is free (as rnnkit bench refuses a case)."""
    need = estimate_bytes(spec, config, training)
    ok, have = footprint.fits(need, device)
    if not ok:
        raise UserError(
            f"--hidden-size {config.hidden_size} --num-layers {config.num_layers} "
            f"--batch-size {config.batch_size}: {'training' if training else 'evaluating'} "
            f"would need about {need / 2**30:.1f} GiB (estimated before allocating); "
            f"{device.type} has {have / 2**30:.1f} GiB available: use a smaller --hidden-size, "
            f"--num-layers, --batch-size or --seq-len")
