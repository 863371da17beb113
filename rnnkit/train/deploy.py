"""A trained model in the form a deployment runs it: what ``rnnkit export`` writes and what
``rnnkit generate --onnx`` steps through.

    charlm             the step model, for a sampling loop outside Python:
                         tokens (N,) int64, h (L, N, H) [, c (L, N, H) for LSTM]
                         -> logits (N, V), h_n [, c_n]      (start from zero states)
    classify           tokens (T, N) int64, padded; lengths (N,) int64 -> logits (N, C)
    tag                tokens (T, N) int64, padded; lengths (N,) int64 -> logits (T, N, C)
    adding             features (T, N, 2) float32 -> prediction (N, 1)
    copy               tokens (T, N) int64 -> logits (T, N, 9)

N and T are free (dynamic axes). Padded batches go through the recurrent layer packed, as in
training: each sequence's lengths[n] first tokens only, so padding never reaches a result (tag's
rows past a sequence's end hold the head's bias alone). seq2seq does not export: its greedy
decoding is a loop around two models, with the decoder fed its own previous word.

The model is always rnnkit's layer (the run's weights load unchanged whatever --impl trained
them), so a .pt2 holds rnnkit's operators and an .onnx file ONNX's LSTM/GRU/RNN (rnnkit.onnx).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .. import functional as RF
from .. import onnx as rko
from .config import EXPORT_FORMATS, EXPORT_TASKS
from .errors import UserError
from .models import SequenceModel

#: The ONNX state names of each cell: (inputs, outputs).
STATE_NAMES = {"lstm": (["h", "c"], ["h_n", "c_n"]), "gru": (["h"], ["h_n"]),
               "rnn": (["h"], ["h_n"])}

#: Example sizes of the export. torch.export fixes axes whose example size is 0 or 1, so the
#: dynamic ones are examples of at least 2, and unequal so that no two are taken as one.
EXAMPLE_N, EXAMPLE_T = 2, 5


@dataclass
class Deployable:
    """A model ready for export: the module, example inputs, names and dynamic axes."""

    module: nn.Module
    args: tuple  # example inputs
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: tuple  # per input: {axis: name}


class CharStep(nn.Module):
    """One step of a charlm model. forward(tokens (N,) int64, h (L, N, H) [, c (L, N, H)])
    returns (logits (N, V), h_n [, c_n])."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, h: Tensor, c: Optional[Tensor] = None
                ) -> tuple[Tensor, ...]:
        logits, hn = self.model(tokens.unsqueeze(0), hx=h if c is None else (h, c))
        return (logits[0], *(hn if isinstance(hn, tuple) else (hn,)))


def _layer_params(rnn: nn.Module) -> list[RF.LayerParams]:
    """(w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction, by torch.nn's parameter names."""
    out = []
    for layer in range(rnn.num_layers):
        for suffix in ("", "_reverse")[:2 if rnn.bidirectional else 1]:
            get = lambda base: getattr(rnn, f"{base}_l{layer}{suffix}", None)  # noqa: E731
            out.append((get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                        get("weight_hr")))
    return out


class PaddedBatch(nn.Module):
    """A classify or tag model over a padded batch. forward(tokens (T, N) int64, lengths (N,)
    int64) returns logits (N, C), or (T, N, C) for per-step tasks.

    SequenceModel packs with pack_padded_sequence, which torch.export cannot trace (the batch
    is read from batch_sizes[0] as a Python number); this packs with tensor operations instead
    (sort by length, mask, batch_sizes as a tensor) and runs rnnkit.functional on the packed
    rows, so that the exported graph holds the packing too. Same results as the model's own
    forward with lengths (tests/cli/test_export.py).
    """

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model
        rnn = model.rnn
        self.run = {"lstm": RF.lstm, "gru": RF.gru}.get(model.cell) or (
            lambda *a, **k: RF.rnn(*a, **k, nonlinearity=rnn.nonlinearity))

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        m, rnn = self.model, self.model.rnn
        T, N = tokens.shape
        order = torch.topk(lengths, N).indices  # longest first, as packing needs
        unsort = torch.empty_like(order).scatter_(0, order, torch.arange(N))
        active = torch.arange(T).unsqueeze(1) < lengths[order].unsqueeze(0)  # (T, N)
        rows = m.embed(tokens[:, order][active])  # (P, E): the packed rows, time-major
        directions = 2 if rnn.bidirectional else 1
        zeros = rows.new_zeros(rnn.num_layers * directions, N, rnn.hidden_size)
        hx = (zeros, zeros) if m.cell == "lstm" else zeros
        batch_sizes = active.sum(1)
        batch_sizes = batch_sizes[batch_sizes > 0]  # rows past the longest sequence: none
        out, hn = self.run(rows, hx, _layer_params(rnn), rnn.num_layers, rnn.bidirectional,
                           batch_sizes=batch_sizes)
        if m.spec.per_step:
            padded = out.new_zeros(T, N, out.shape[-1]).index_put((active,), out)
            return m.head(padded[:, unsort])
        last = hn[0] if isinstance(hn, tuple) else hn  # (L*D, N, H), as SequenceModel reads it
        return m.head(torch.cat(list(last[-directions:]), dim=-1)[unsort])


class WholeSequence(nn.Module):
    """A model over unpadded sequences (adding, copy): forward(x) returns the model's output."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[0]


def check_task(task: str) -> None:
    """UserError (one line) unless runs of ``task`` export."""
    if task not in EXPORT_TASKS:
        raise UserError(f"{task} runs do not export (seq2seq decodes in a loop around two "
                        f"models); the tasks that export: {', '.join(EXPORT_TASKS)}")


def check_model(model: SequenceModel) -> None:
    """UserError (one line) unless the model's layer is one that export writes: rnnkit's plain
    LSTM, GRU or RNN, without zoneout (which the exported arithmetic does not have)."""
    if model.cell not in STATE_NAMES:
        raise UserError(f"--cell {model.cell} runs do not export (export writes the plain "
                        f"cells: {', '.join(STATE_NAMES)})")
    if getattr(model.rnn, "zoneout", 0) or getattr(model.rnn, "zoneout_cell", 0):
        raise UserError("runs trained with --zoneout do not export (zoneout changes the "
                        "evaluation arithmetic, which the exported layers do not have)")


def deployable(task: str, model: SequenceModel) -> Deployable:
    """The export form of a run's model (in eval mode, on the CPU) for ``task``."""
    check_task(task)
    check_model(model)
    N, T = EXAMPLE_N, EXAMPLE_T
    spec = model.spec
    if task == "charlm":
        state_in, state_out = STATE_NAMES[model.cell]
        L = model.rnn.num_layers
        states = tuple(torch.zeros(L, N, model.rnn.hidden_size) for _ in state_in)
        return Deployable(CharStep(model), (torch.zeros(N, dtype=torch.long), *states),
                          ["tokens", *state_in], ["logits", *state_out],
                          ({0: "N"}, *({1: "N"} for _ in states)))
    if spec.pad_index is not None:  # padded batches: classify, tag
        lengths = torch.arange(T, T - N, -1)  # unequal, so no axis is taken for another
        return Deployable(PaddedBatch(model), (torch.ones(T, N, dtype=torch.long), lengths),
                          ["tokens", "lengths"], ["logits"], ({0: "T", 1: "N"}, {0: "N"}))
    if spec.vocab_size > 0:
        x = torch.zeros(T, N, dtype=torch.long)
        return Deployable(WholeSequence(model), (x,), ["tokens"], ["logits"],
                          ({0: "T", 1: "N"},))
    x = torch.zeros(T, N, spec.input_features)
    return Deployable(WholeSequence(model), (x,), ["features"], ["prediction"],
                      ({0: "T", 1: "N"},))


def export(task: str, model: SequenceModel, fmt: str, out: str) -> None:
    """Writes ``task``'s export form of ``model`` to ``out``: an ONNX file (fmt "onnx") or
    torch.export's program (fmt "pt2"). UserError (one line) for an unsupported task, a missing
    export extra, or a file that cannot be written."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    d = deployable(task, model.cpu().eval())
    dims: dict[str, torch.export.Dim] = {}
    dynamic = tuple({axis: dims.setdefault(name, torch.export.Dim(name))
                     for axis, name in spec.items()} for spec in d.dynamic_shapes)
    if fmt == "onnx":
        try:
            rko.translation_table()  # the extra's packages, before the export's work
        except ImportError as e:
            raise UserError(str(e)) from None
    with torch.no_grad():  # the inference form of rnnkit's operators: no workspace
        program = torch.export.export(d.module, d.args, dynamic_shapes=dynamic)
    # the ONNX exporter warns of torchvision's missing operators, which no model here uses
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    try:
        if fmt == "pt2":
            torch.export.save(program, out)
        else:
            exporter_log.setLevel(logging.ERROR)
            rko.export(program, d.args, out, input_names=d.input_names,
                       output_names=d.output_names)
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror})") from None
    finally:
        exporter_log.setLevel(level)


# ---- stepping an exported charlm model --------------------------------------------------------
#: One step of a language model: (token ids (K,), state or None at the start) -> (logits of the
#: last token (V,), new state).
Step = Callable[[list[int], Optional[object]], tuple[Tensor, object]]


def onnx_step(path: str, model: SequenceModel) -> Step:
    """The step function of ``path``, a charlm step model written by ``rnnkit export``, run by
    onnxruntime; checked against the run's ``model`` (names, state and vocabulary sizes)."""
    check_model(model)
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"--onnx needs onnxruntime, which is not installed; install the export "
                        f"extra: {rko.EXTRA}") from None
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types, one per failure
        raise UserError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
    state_in, state_out = STATE_NAMES[model.cell]
    L, H, V = model.rnn.num_layers, model.rnn.hidden_size, model.spec.output_size
    want = ["tokens", *state_in], ["logits", *state_out]
    got = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    shapes = [i.shape for i in session.get_inputs()[1:]] + [session.get_outputs()[0].shape[-1:]]
    fits = [s[0] == L and s[2] == H for s in shapes[:-1]] + [shapes[-1] == [V]]
    if tuple(got) != tuple(want) or not all(fits):
        raise UserError(f"{path}: not this run's step model (expected inputs {', '.join(want[0])} "
                        f"with states ({L}, N, {H}) and logits (N, {V}); got inputs "
                        f"{', '.join(got[0])} of shapes {shapes[:-1]}, outputs {', '.join(got[1])}"
                        f"); export it with: rnnkit export RUN_DIR --format onnx")

    def step(ids: list[int], state):
        if state is None:
            state = [torch.zeros(L, 1, H).numpy() for _ in state_in]
        for index in ids:
            feeds = dict(zip(want[0], [torch.tensor([index]).numpy(), *state]))
            logits, *state = session.run(want[1], feeds)
        return torch.from_numpy(logits[0]), state

    return step


def torch_step(model: SequenceModel) -> Step:
    """The step function of the PyTorch model: the whole prompt in one call; logits on the
    model's device."""
    device = next(model.parameters()).device

    def step(ids: list[int], state):
        logits, state = model(torch.tensor(ids, device=device).view(-1, 1), hx=state)
        return logits[-1, 0], state

    return step
