"""The lessons' commands: rnnkit gradflow, longrange and inspect. The logic lives in rnnkit.lessons;
torch is imported inside the commands, so --help needs none.
"""

from __future__ import annotations

import sys

import click

from ..train.config import TRAIN_CELLS, TrainConfig
from .common import (IMPLS, RUN, FiniteFloatRange, bounded, cell_list, default, png_note,
                     user_errors, write_json, write_text)


def lesson_training_options(command):
    """--seed, --impl and --threads of the lesson commands that train small models."""
    for option in reversed([
        click.option("--seed", type=bounded("seed"), default=default("seed"),
                     help="Seed of weights and data."),
        click.option("--impl", type=IMPLS, default=default("impl"),
                     help="Recurrent implementation for training."),
        click.option("--threads", type=click.IntRange(1), default=1,
                     help="CPU threads for torch (one is fastest for layers this small, most of "
                          "all on a busy machine)."),
    ]):
        command = option(command)
    return command


@click.command()
@click.option("--task", type=click.Choice(["adding", "copy"]), default="adding",
              help="The long-range task the models learn and are measured on.")
@click.option("--seq-len", type=click.IntRange(2), default=100,
              help="Sequence length T (copy: the delay).")
@click.option("--cells", default="rnn,lstm,gru", callback=cell_list,
              help="Cells to train and measure, comma-separated.")
@click.option("--hidden-size", type=click.IntRange(1), default=64)
@click.option("--batch-size", type=click.IntRange(1), default=64, help="Training batch.")
@click.option("--steps", type=click.IntRange(1), default=1000, help="Training steps per cell.")
@click.option("--lr", type=FiniteFloatRange(0, 1e30, min_open=True), default=0.03,
              help="Peak learning rate (AdamW, warm-up and cosine decay as rnnkit train).")
@lesson_training_options
@click.option("--sequences", type=click.IntRange(1), default=256,
              help="Validation sequences the gradient norms are averaged over.")
@click.option("--run", "runs", type=RUN, multiple=True,
              help="Measure this adding/copy run folder instead of training (repeatable).")
@click.option("--keep-runs", type=click.Path(file_okay=False), default=None,
              help="Keep the trained run folders here (one per cell) [default: a temporary "
                   "folder, removed].")
@click.option("--png", type=click.Path(dir_okay=False), default="gradflow.png",
              help="Figure to write (needs matplotlib).")
@click.option("--no-png", is_flag=True, help="Write no figure.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default="gradflow.json",
              help="The measured norms, as JSON.")
def gradflow(task, seq_len, cells, hidden_size, batch_size, steps, lr, seed, impl, threads,
             sequences, runs, keep_runs, png, no_png, json_path) -> None:
    """Lesson: how the loss's gradient fades as it flows back through time.

    Trains a tanh RNN, an LSTM and a GRU briefly on the same long-range task (or loads --run
    folders), then measures ||dL/dh_t|| for every step t, averaged over validation sequences, at
    initialisation and after training. Prints a summary, writes the numbers as JSON and the
    curves as a PNG (log scale).
    """
    with user_errors():
        import torch

        from ..lessons import gradflow as G

        torch.set_num_threads(threads)
        base = TrainConfig(task=task, seq_len=seq_len, hidden_size=hidden_size,
                           batch_size=batch_size, steps=steps, lr=lr, seed=seed, impl=impl,
                           threads=threads, eval_every=steps)
        curves = G.gradflow(base, cells, runs, keep_runs, sequences,
                            echo=lambda s: click.echo(s, err=True))
        for line in G.summary(curves):
            click.echo(line)
        write_json(json_path, G.to_json(curves, None if runs else base, sequences))
        if not no_png:
            png_note(png, lambda p: G.plot(curves, p))


def _length_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        lengths = [int(n) for n in value.split(",") if n.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 2:
        raise click.BadParameter(f"expected comma-separated lengths of at least 2, got {value!r}")
    return list(dict.fromkeys(lengths))


def _train_cell_list(ctx: click.Context, param: click.Parameter,
                     value: str | None) -> list[str] | None:
    """--cells of longrange: any cell rnnkit train takes (the LayerNorm ones too)."""
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or any(n not in TRAIN_CELLS for n in names):
        raise click.BadParameter(f"expected a comma-separated list of {', '.join(TRAIN_CELLS)}, "
                                 f"got {value!r}")
    return list(dict.fromkeys(names))


#: The budget of `rnnkit longrange` per task (found to show the classic result in minutes on two
#: CPU cores; copy: the GRU budget that solves delays 50, 100 and 200 in under ten minutes with
#: --threads 2, each run stopped once solved; see docs/lessons.md).
LONGRANGE_BUDGET = {
    "adding": {"cells": "rnn,lstm,gru", "hidden_size": 64, "steps": 2000, "lr": 0.03,
               "batch_size": 64, "chrono": False, "grad_clip": 1.0, "until_solved": False,
               "eval_every": None},
    "copy": {"cells": "gru", "hidden_size": 256, "steps": 1600, "lr": 0.01, "batch_size": 128,
             "chrono": False, "grad_clip": 0.0, "until_solved": True, "eval_every": 100},
}


def _budget_help(field: str, sep: str = ", ") -> str:
    def shown(value) -> str:
        return ("on" if value else "off") if isinstance(value, bool) else str(value)

    return sep.join(f"{task} {shown(b[field])}" for task, b in LONGRANGE_BUDGET.items())


@click.command()
@click.option("--task", type=click.Choice(["adding", "copy"]), default="adding",
              help="adding: MSE of the sum of two marked numbers; copy: accuracy of recalling "
                   "ten symbols after a delay.")
@click.option("--lengths", default="50,100,200", callback=_length_list,
              help="Sequence lengths (copy: delays), comma-separated.")
@click.option("--cells", default=None, callback=_train_cell_list,
              help="Cells, comma-separated (any of rnnkit train's --cell) [default: "
                   f"{_budget_help('cells', '; ')}].")
@click.option("--chrono/--no-chrono", default=None,
              help="Start the gated cells from chrono initialisation, T_max = the sequence "
                   f"length [default: {_budget_help('chrono')}].")
@click.option("--eval-every", type=click.IntRange(1), default=None,
              help="Validate every this many steps, to record the step at which each model "
                   "solves the task [default: adding only at the end, copy 100].")
@click.option("--until-solved/--full-budget", default=None,
              help="Stop each run at the first validation that solves the task, or train every "
                   f"run for all its steps [default: {_budget_help('until_solved')}].")
@click.option("--grad-clip", type=FiniteFloatRange(0, 1e30), default=None,
              help="Largest global gradient norm, 0 for no clipping "
                   f"[default: {_budget_help('grad_clip')}].")
@click.option("--hidden-size", type=click.IntRange(1), default=None,
              help=f"Hidden units [default: {_budget_help('hidden_size')}].")
@click.option("--steps", type=click.IntRange(1), default=None,
              help=f"Training steps per model [default: {_budget_help('steps')}].")
@click.option("--lr", type=FiniteFloatRange(0, 1e30, min_open=True), default=None,
              help=f"Peak learning rate [default: {_budget_help('lr')}].")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help=f"Sequences per step [default: {_budget_help('batch_size')}].")
@lesson_training_options
@click.option("--keep-runs", type=click.Path(file_okay=False), default=None,
              help="Keep the run folders here [default: a temporary folder, removed].")
@click.option("--table", "table_path", type=click.Path(dir_okay=False), default=None,
              help="Markdown file for the table [default: longrange-TASK.md].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="JSON file for every row [default: longrange-TASK.json].")
def longrange(task, lengths, cells, chrono, eval_every, until_solved, grad_clip, hidden_size,
              steps, lr, batch_size, seed, impl, threads, keep_runs, table_path,
              json_path) -> None:
    """Lesson: which cells carry information over long sequences, as a paper's table.

    Trains every cell at every length with the same budget (rnnkit train's loop and schedule)
    and reports the score at the end of training (with --until-solved, at the validation that
    solved the task) on held-out sequences beside the score of a model that learned nothing:
    adding: mean squared error vs always predicting 1.0 (about 0.167); copy: symbol accuracy vs
    guessing (1/8). Prints the table as markdown and writes it and the JSON. The copy budget
    solves delays 50, 100 and 200 in about nine minutes with --threads 2 (docs/lessons.md).
    """
    with user_errors():
        import torch

        from ..lessons import longrange as LR

        torch.set_num_threads(threads)
        budget = LONGRANGE_BUDGET[task]
        steps = steps or budget["steps"]
        eval_every = eval_every or budget["eval_every"] or steps
        base = TrainConfig(task=task, hidden_size=hidden_size or budget["hidden_size"],
                           steps=steps, lr=lr or budget["lr"],
                           batch_size=batch_size or budget["batch_size"], seed=seed, impl=impl,
                           threads=threads, eval_every=min(eval_every, steps),
                           grad_clip=budget["grad_clip"] if grad_clip is None else grad_clip)
        cells = cells or budget["cells"].split(",")
        rows = LR.longrange(base, lengths, cells, keep_runs,
                            echo=lambda s: click.echo(s, err=True),
                            chrono=budget["chrono"] if chrono is None else chrono,
                            until_solved=(budget["until_solved"] if until_solved is None
                                          else until_solved))
        table = LR.markdown(rows, base)
        click.echo(table, nl=False)
        write_text(table_path or f"longrange-{task}.md", table)
        write_json(json_path or f"longrange-{task}.json", LR.to_json(rows, base))


@click.command(name="inspect")
@click.argument("run_dir", type=RUN)
@click.option("--text", required=True, help="Text the LSTM reads (characters of its vocabulary).")
@click.option("--layer", type=click.IntRange(1), default=None,
              help="Layer to show, 1 = first [default: the last].")
@click.option("--units", "count", type=click.IntRange(1), default=16,
              help="Heat-map: this many units, those whose cell state varies most.")
@click.option("--show", type=click.IntRange(0), default=3,
              help="Terminal: this many of those units.")
@click.option("--unit", "units", type=int, multiple=True,
              help="Show this unit (repeatable) instead of the most variable ones.")
@click.option("--width", type=click.IntRange(8), default=72, help="Characters per terminal line.")
@click.option("--color/--no-color", default=None,
              help="Shade the text itself with ANSI colours [default: on a terminal].")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              help="Which checkpoint of the run.")
@click.option("--png", type=click.Path(dir_okay=False), default="gates.png",
              help="Heat-map to write (needs matplotlib).")
@click.option("--no-png", is_flag=True, help="Write no figure.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the gates and states of the heat-map's units as JSON.")
def inspect_(run_dir, text, layer, count, show, units, width, color, checkpoint, png, no_png,
             json_path) -> None:
    """Lesson: an LSTM's forget, input and output gates and cell state on a text, per character.

    RUN_DIR is a character-level LSTM run (rnnkit train with its defaults makes one). The gates
    are recomputed from the saved weights with the LSTM equations; the units shown are those whose
    cell state varies most over the text, unless --unit picks them.
    """
    with user_errors():
        from ..lessons import inspect_gates as GT

        trace = GT.trace_run(run_dir, text, layer, checkpoint)
        chosen = GT.pick_units(trace, count, units)
        if color is None:
            color = sys.stdout.isatty()
        for line in GT.render(trace, chosen[:show] if not units else chosen, width, color):
            click.echo(line, color=color)
        if json_path:
            write_json(json_path, GT.to_json(trace, chosen), indent=None)
        if not no_png:
            step = GT.label_step(len(text))
            if step > 1:
                click.echo(f"note: {len(text):,} characters: the PNG labels every {step}th "
                           "(with its position), not each")
            png_note(png, lambda p: GT.plot(trace, chosen, p))
