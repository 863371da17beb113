"""Lesson 3: what an LSTM's gates do on real text (``rnnkit inspect``).

The gates of a character-level LSTM run are recomputed from its saved weights, one character at a
time, with the equations of rnnkit.reference (gate order i, f, g, o as in torch.nn):

    i = σ(W_ii x + b_ii + W_hi h + b_hi)      f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f ⊙ c + i ⊙ g                         h' = o ⊙ tanh(c')

f near 1 keeps the cell state, i near 1 writes g into it, o near 1 shows it in h.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import click
import torch
from torch import Tensor

from ..train.errors import UserError
from ..train.plot import save_figure
from ..train.runs import load_run

GATES = ("forget", "input", "output")
#: Levels of the terminal shading, from 0 to 1.
SHADES = " ░▒▓█"


@dataclass
class Trace:
    """Per-character activations of one LSTM layer; every tensor is (L, H), float64."""

    text: str  # the L characters read
    layer: int  # which layer (1 = the first)
    input: Tensor  # i_t
    forget: Tensor  # f_t
    cell_input: Tensor  # g_t
    output: Tensor  # o_t
    cell: Tensor  # c_t
    hidden: Tensor  # h_t


def lstm_trace(model, ids: Tensor, layer: int) -> Trace:
    """Run the characters ``ids`` (L,) from a zero state through the layers of ``model`` (a charlm
    SequenceModel) up to ``layer`` (1-based), and return that layer's gates and states."""
    rnn = model.rnn
    x = model.embed(ids).detach().double()  # (L, E)
    for k in range(layer):
        w_ih = getattr(rnn, f"weight_ih_l{k}").detach().double()  # (4H, E or H)
        w_hh = getattr(rnn, f"weight_hh_l{k}").detach().double()  # (4H, H)
        bias = getattr(rnn, f"bias_ih_l{k}", None)
        b = (bias.detach().double() + getattr(rnn, f"bias_hh_l{k}").detach().double()
             if bias is not None else torch.zeros(w_ih.shape[0], dtype=torch.float64))
        H = w_hh.shape[1]
        h = torch.zeros(H, dtype=torch.float64)
        c = torch.zeros(H, dtype=torch.float64)
        rows = {name: [] for name in ("i", "f", "g", "o", "c", "h")}
        for x_t in x:
            a_i, a_f, a_g, a_o = (w_ih @ x_t + w_hh @ h + b).chunk(4)
            i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            for name, v in zip("ifgoch", (i, f, g, o, c, h)):
                rows[name].append(v)
        s = {name: torch.stack(v) for name, v in rows.items()}
        x = s["h"]  # the next layer reads this one's h
    return Trace("", layer, s["i"], s["f"], s["g"], s["o"], s["c"], s["h"])


def trace_run(run_dir: str, text: str, layer: Optional[int] = None, which: str = "best"
              ) -> Trace:
    """lstm_trace of a charlm LSTM run on ``text``; UserError (one line) for another kind of run,
    an empty text, characters the run has never seen, or a layer it does not have."""
    if not text:
        raise UserError("--text is empty: give at least one character to read")
    config, task, model, _ = load_run(run_dir, which=which, device="cpu", read_data=False)
    if config.task != "charlm" or config.cell != "lstm":
        raise UserError(f"{run_dir}: inspect needs a character-level LSTM run (--task charlm "
                        f"--cell lstm); this one is --task {config.task} --cell {config.cell}")
    unknown = sorted({c for c in text if c not in task.vocab.stoi})
    if unknown:
        raise UserError(f"--text: character(s) not in the run's vocabulary of "
                        f"{len(task.vocab)}: " + " ".join(repr(c) for c in unknown))
    layers = config.num_layers
    layer = layers if layer is None else layer
    if not 1 <= layer <= layers:
        raise UserError(f"--layer {layer}: the run has {layers} layer(s), numbered 1 to {layers}")
    ids = torch.tensor(task.vocab.encode(text), dtype=torch.long)
    with torch.no_grad():
        trace = lstm_trace(model, ids, layer)
    trace.text = text
    return trace


def pick_units(trace: Trace, count: int, units: Sequence[int] = ()) -> list[int]:
    """``units`` if given (checked), else the ``count`` units whose cell state varies most over
    the text (standard deviation of c_t; the first ones when the text is one character)."""
    H = trace.cell.shape[1]
    if units:
        bad = [u for u in units if not 0 <= u < H]
        if bad:
            raise UserError(f"--unit {bad[0]}: the layer has {H} units, numbered 0 to {H - 1}")
        return list(dict.fromkeys(units))
    spread = trace.cell.std(0, unbiased=False)
    return spread.argsort(descending=True, stable=True)[:min(count, H)].tolist()


def printable(ch: str) -> str:
    """One visible column for a character: line breaks as ⏎, tabs as →, other controls as ·."""
    return {"\n": "⏎", "\t": "→", "\r": "␍"}.get(ch, ch if ch.isprintable() else "·")


def _level(v: float) -> int:
    return min(len(SHADES) - 1, max(0, int(v * len(SHADES))))


def rows_of(trace: Trace, unit: int) -> list[tuple[str, list[float]]]:
    """(name, values in [0, 1]) for the rows drawn per unit: the three gates, and the cell state
    scaled from its lowest value over the text (0) to its highest (1)."""
    rows = [(name, getattr(trace, name)[:, unit].tolist()) for name in GATES]
    c = trace.cell[:, unit]
    span = float(c.max() - c.min())
    rows.append(("cell", ((c - c.min()) / span).tolist() if span > 0 else [0.5] * len(c)))
    return rows


def render(trace: Trace, units: Sequence[int], width: int = 72, color: bool = False
           ) -> list[str]:
    """The terminal view: per unit, the text and under it one line per gate and one for the cell
    state, each character shaded by the value (blocks from ' ' = 0 to '█' = 1). With ``color``,
    each row shows the text itself on a background as bright as the value instead."""
    chars = [printable(c) for c in trace.text]
    out = [f"layer {trace.layer}; shading ' ░▒▓█': gates from 0 to 1, cell state from its "
           "lowest to its highest over the text"]
    for unit in units:
        rows = rows_of(trace, unit)
        out.append("")
        out.append(f"unit {unit}  (cell state from {trace.cell[:, unit].min():.2f} to "
                   f"{trace.cell[:, unit].max():.2f})")
        for start in range(0, len(chars), width):
            piece = chars[start:start + width]
            out.append(f"  {'text':<7}│{''.join(piece)}│")
            for name, values in rows:
                vs = values[start:start + width]
                if color:
                    cells = []
                    for ch, v in zip(piece, vs):
                        grey = int(40 + 215 * v)
                        cells.append(click.style(ch, fg="black" if v > 0.5 else "white",
                                                 bg=(grey, grey, grey)))
                    line = "".join(cells)
                else:
                    line = "".join(SHADES[_level(v)] for v in vs)
                out.append(f"  {name:<7}│{line}│")
    return out


#: Most character labels along the heat-map's x axis: one per character made a 2,000-character
#: text take 39 s to draw (and 20,000 over two minutes); past this, every k-th is labelled.
MAX_LABELS = 120


def label_step(length: int) -> int:
    """Label every this-many characters of a text of ``length`` (1 up to MAX_LABELS)."""
    return max(1, -(-length // MAX_LABELS))


def plot(trace: Trace, units: Sequence[int], path: str) -> None:
    """Heat-maps: characters along x, the chosen units along y; one panel per gate (0 to 1) and
    one for the cell state (diverging around 0). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = len(trace.text)
    panels = [(f"{name} gate", getattr(trace, name)[:, units].T, "viridis", 0.0, 1.0)
              for name in GATES]
    c = trace.cell[:, units].T
    bound = max(float(c.abs().max()), 1e-6)
    panels.append(("cell state c", c, "RdBu_r", -bound, bound))
    fig_w = min(48.0, 2.5 + 0.14 * L)
    fig_h = 1.2 + len(panels) * (0.6 + 0.2 * len(units))
    fig, axes = plt.subplots(len(panels), 1, figsize=(fig_w, fig_h), squeeze=False)
    step = label_step(L)
    ticks = list(range(0, L, step))
    labels = [printable(trace.text[i]) if step == 1 else f"{printable(trace.text[i])}\n{i}"
              for i in ticks]
    for ax, (title, values, cmap, lo, hi) in zip(axes[:, 0], panels):
        im = ax.imshow(values.numpy(), aspect="auto", cmap=cmap, vmin=lo, vmax=hi,
                       interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_yticks(range(len(units)))
        ax.set_yticklabels([str(u) for u in units], fontsize=6)
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, fontsize=7, family="monospace")
        ax.tick_params(length=0)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    axes[-1, 0].set_xlabel("character read" if step == 1 else
                           f"character read (every {step}th labelled, with its position)")
    fig.supylabel("unit", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def to_json(trace: Trace, units: Sequence[int], digits: int = 4) -> dict:
    """The text, the units, and per gate or state one row per unit of one value per character
    (rounded to ``digits`` decimals)."""
    def rows(t: Tensor) -> list[list[float]]:
        return [[round(v, digits) for v in row] for row in t[:, units].T.tolist()]

    return {"text": trace.text, "layer": trace.layer, "units": list(units),
            **{name: rows(getattr(trace, name))
               for name in ("input", "forget", "cell_input", "output", "cell", "hidden")}}
