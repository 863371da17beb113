"""Models around one recurrent layer whose implementation is chosen by name.

``impl`` picks the class of the recurrent layer: ``rnnkit`` (rnnkit's fused kernels; ``fused``
is the older spelling), ``torch`` (torch.nn) or ``reference`` (rnnkit.reference, a plain-PyTorch
loop). All three have the same parameter names and shapes, so a state dict saved with one loads
into the others. registry.build_model picks this model or seq2seq's by the task's spec.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import footprint
from .. import init as rk_init
from .. import reference
from .config import IMPLS, TRAIN_CELLS, canonical_impl, cell_family
from .errors import UserError

#: Where each implementation's layer classes live: rnnkit's public names (rnnkit.LSTM, and
#: layers outside rnnkit.nn such as rnnkit.LayerNormLSTM), torch.nn, rnnkit.reference.
LAYERS = {"rnnkit": importlib.import_module("..", __package__), "torch": nn,
          "reference": reference}

#: The class name of each training cell (config.TRAIN_CELLS) in those modules.
LAYER_CLASSES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "layernorm-lstm": "LayerNormLSTM",
                 "layernorm-gru": "LayerNormGRU"}


def recurrent_class(impl: str, cell: str) -> type:
    """The layer class for ``impl`` in IMPLS (or an alias of one) and ``cell`` in TRAIN_CELLS;
    UserError when that implementation has no such layer (the LayerNorm layers are rnnkit's)."""
    if canonical_impl(impl) not in IMPLS:
        raise ValueError(f"impl: expected one of {', '.join(IMPLS)}, got {impl!r}")
    if cell not in TRAIN_CELLS:
        raise ValueError(f"cell: expected one of {', '.join(TRAIN_CELLS)}, got {cell!r}")
    module = LAYERS[canonical_impl(impl)]
    try:
        return getattr(module, LAYER_CLASSES[cell])
    except AttributeError:
        raise UserError(f"--cell {cell} --impl {impl}: {module.__name__}.{LAYER_CLASSES[cell]} "
                        f"does not exist in this install"
                        + ("" if impl == "rnnkit" else "; try --impl rnnkit")) from None


@dataclass(frozen=True)
class LayerOptions:
    """How to build the recurrent layer beyond its sizes (TrainConfig's fields of these names)."""

    weight_drop: float = 0.0  # DropConnect on W_hh (training only)
    variational_dropout: float = 0.0  # one mask per sequence on each layer's input (training)
    zoneout: float = 0.0  # zoneout of h (LSTM: of c too); also changes evaluation
    forget_bias: Optional[float] = None  # initial forget-gate bias (rnnkit.init.forget_bias_)
    chrono: Optional[int] = None  # chrono initialisation's T_max (rnnkit.init.chrono_init_)

    @classmethod
    def of(cls, config, inference: bool = False) -> "LayerOptions":
        """The options of ``config``; with ``inference``, without the training-only dropouts
        (they change nothing in evaluation, and other implementations lack them)."""
        options = cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})
        if inference:
            options = dataclasses.replace(options, weight_drop=0.0, variational_dropout=0.0)
        return options

    def kwargs(self, cell: str) -> dict:
        """Constructor arguments beyond torch.nn's (those that are set)."""
        out = {}
        if self.weight_drop:
            out["weight_drop"] = self.weight_drop
        if self.variational_dropout:
            out["variational_dropout"] = self.variational_dropout
        if self.zoneout:
            out["zoneout"] = self.zoneout
            if cell_family(cell) == "lstm":
                out["zoneout_cell"] = self.zoneout
        return out


#: The command-line option behind each constructor argument (for the errors).
_FLAGS = {"weight_drop": "--weight-drop", "variational_dropout": "--variational-dropout",
          "zoneout": "--zoneout", "zoneout_cell": "--zoneout"}


def make_layer(impl: str, cell: str, options: LayerOptions, input_size: int, hidden_size: int,
               **sizes) -> nn.Module:
    """The recurrent layer of ``impl`` and ``cell`` (``sizes``: num_layers, dropout,
    bidirectional), with ``options``: constructor arguments where the class takes them (else
    UserError naming the option), and the bias initialisations applied to its parameters."""
    layer = recurrent_class(impl, cell)
    extra = options.kwargs(cell)
    accepted = inspect.signature(layer).parameters
    missing = [k for k in extra if k not in accepted]
    if missing:
        flags = ", ".join(dict.fromkeys(_FLAGS[k] for k in missing))
        raise UserError(f"{flags}: the {impl} {LAYER_CLASSES[cell]} layer "
                        f"({layer.__module__}.{layer.__name__}) has no "
                        f"{', '.join(missing)} argument"
                        + ("; use --impl rnnkit" if impl != "rnnkit" else " in this install"))
    module = layer(input_size, hidden_size, **sizes, **extra)
    if options.forget_bias is not None:
        rk_init.forget_bias_(module, options.forget_bias)
    if options.chrono is not None:
        rk_init.chrono_init_(module, options.chrono)
    return module


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
                 embed_size: int, dropout: float, bidirectional: bool,
                 options: LayerOptions = LayerOptions()) -> None:
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
        self.rnn = make_layer(impl, cell, options, width, hidden_size, num_layers=num_layers,
                              dropout=dropout if num_layers > 1 else 0.0,
                              bidirectional=bidirectional)
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
    values = footprint.layer_values(cell_family(config.cell), width, config.hidden_size, config.num_layers,
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
