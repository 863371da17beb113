"""rnnkit's command line. Parses options, builds a config, calls the library: no logic of its own.

torch is imported inside the commands, so ``rnnkit --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from . import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="rnnkit")
def main() -> None:
    """Fused LSTM, GRU and RNN layers for PyTorch: train, evaluate, sample, measure, verify."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(as_json: bool) -> None:
    """Print how rnnkit was built and what it can use here."""
    import rnnkit

    data = rnnkit.build_info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        click.echo(f"{key:<{width}}  {value}")
    if "cuda" in data["backends"] and not data["gpus_visible"]:
        click.echo("note: CUDA kernels were built, but no GPU is visible here")


@main.command()
@click.option("--device", type=click.Choice(["all", "cpu", "cuda"]), default="all",
              help="Which compiled backend to verify.")
@click.option("--seed", type=int, default=None, help="Seed of the random inputs (default: fresh).")
@click.option("--no-gradcheck", is_flag=True, help="Skip torch.autograd.gradcheck (faster).")
@click.option("--no-opcheck", is_flag=True, help="Skip torch.library.opcheck (faster).")
def check(device: str, seed: int | None, no_gradcheck: bool, no_opcheck: bool) -> None:
    """Verify every compiled operator against the reference, in float64.

    Checks values, gradients, gradcheck and opcheck on fresh random inputs; prints one line per
    operator, configuration and device; exits 1 on any failure.
    """
    import torch

    import rnnkit
    from rnnkit import check as C

    available = C.devices()
    if device == "cuda" and "cuda" not in available:
        reason = ("no GPU is visible" if rnnkit.build_info()["cuda_archs"]
                  else "the CUDA kernels were not built (rebuild with RNNKIT_CUDA=1)")
        raise click.ClickException(f"cannot check cuda: {reason}")
    chosen = available if device == "all" else [device]
    failures = 0
    for dev in chosen:
        for case in C.cases(dev, torch.float64, seed):
            r = C.run_case(case, gradcheck=not no_gradcheck, opcheck=not no_opcheck)
            failures += not r.ok
            mark = "ok  " if r.ok else "FAIL"
            click.echo(f"{mark} {case.name:<10} {dev:<5} {case.label:<32} {r.detail} ({r.seconds:.2f} s)")
    if "cuda" not in chosen:
        click.echo("cuda: not checked (" + ("no GPU visible" if rnnkit.build_info()["cuda_archs"]
                                           else "CUDA kernels not built") + ")")
    if failures:
        raise click.ClickException(f"{failures} check(s) failed")
    click.echo("all checks passed")


IMPL_NAMES = ("rnnkit", "torch", "torch-nocudnn", "cell-loop", "reference", "reference-jit",
              "reference-compile")  # rnnkit.bench.IMPLS, repeated so that --help needs no torch
SUITE_NAMES = ("fastrnns", "small-batch", "sweep", "packed", "long")  # rnnkit.bench.SUITES


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options that were given (for the results)."""
    from click.core import ParameterSource

    words = [ctx.command_path]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value, flag = ctx.params[param.name], param.opts[-1] if param.opts else param.name
        if isinstance(param, click.Option) and param.is_flag:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return " ".join(words)


def _impl_list(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]):
    names = [n.strip() for v in value for n in v.split(",") if n.strip()]
    bad = [n for n in names if n not in IMPL_NAMES]
    if bad:
        raise click.BadParameter(f"unknown implementation {', '.join(map(repr, bad))}; valid: "
                                 f"{', '.join(IMPL_NAMES)}")
    return names or None


@main.command()
@click.option("--suite", type=click.Choice(SUITE_NAMES), default=None,
              help="A named set of shapes (else one shape from the options below).")
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), default="lstm")
@click.option("--seq-len", "-T", type=click.IntRange(1), default=100, help="Time steps.")
@click.option("--batch-size", "-N", type=click.IntRange(1), default=64)
@click.option("--input-size", "-I", type=click.IntRange(1), default=None,
              help="Input features (default: the hidden size).")
@click.option("--hidden-size", "-H", type=click.IntRange(1), default=512)
@click.option("--num-layers", type=click.IntRange(1), default=1)
@click.option("--bidirectional", is_flag=True)
@click.option("--packed-min-len", type=click.IntRange(1), default=None,
              help="Variable lengths spread from this up to --seq-len (a PackedSequence).")
@click.option("--impl", "impls", multiple=True, callback=_impl_list,
              help=f"Implementations, repeatable or comma-separated: {', '.join(IMPL_NAMES)} "
                   "(default: all that run on the device; a suite may choose fewer).")
@click.option("--mode", type=click.Choice(["inference", "training", "both"]), default="both",
              help="inference: forward without grad; training: forward + backward.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
@click.option("--dtype", type=click.Choice(["float32", "float64", "float16", "bfloat16"]),
              default=None, help="Default float32 (a suite may choose another).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch.set_num_threads (default: torch's choice).")
@click.option("--warmup", type=click.IntRange(1), default=2, help="Untimed calls per impl.")
@click.option("--repeats", type=click.IntRange(1), default=None,
              help="Interleaved samples per impl (default 7, or the suite's).")
@click.option("--seed", type=int, default=0)
@click.option("--no-check", is_flag=True, help="Skip the check against the reference.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              default=None, help="Also write the results as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the results as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              default=None, help="Also draw a PNG (bars for one shape, lines for a sweep).")
def bench(suite, cell, seq_len, batch_size, input_size, hidden_size, num_layers, bidirectional,
          packed_min_len, impls, mode, device, dtype, threads, warmup, repeats, seed, no_check,
          json_path, csv_path, plot_path) -> None:
    """Time rnnkit against torch.nn, a cell loop and the reference, after checking each.

    Every implementation is first checked against the float64 reference on the same weights (a
    wrong one is reported, not timed); then warm-up and interleaved repeats; medians, spread,
    speed-up vs torch, achieved GFLOP/s and its fraction of the machine's matmul rate for the
    same products (measured in the same run), and peak memory. Progress goes to stderr.
    """
    from rnnkit import bench as B

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        B.check_device(device)
        if suite:
            s, cases = B.suite_cases(suite, cell, device)
            chosen = impls if impls is not None else s.impls
            if chosen is not None and impls is None:
                chosen = [i for i in chosen if device == "cuda" or i not in B.GPU_ONLY]
            repeats = repeats or s.repeats
            if dtype:
                for c in cases:
                    c.dtype = dtype
        else:
            if packed_min_len is not None and packed_min_len > seq_len:
                raise click.BadParameter(f"must be at most --seq-len ({seq_len}), got "
                                         f"{packed_min_len}", param_hint="--packed-min-len")
            cases = [B.Case(cell, seq_len, batch_size, input_size or hidden_size, hidden_size,
                            num_layers, bidirectional, packed_min_len, dtype or "float32",
                            device)]
            chosen, repeats = impls, repeats or 7
        settings = B.Settings(modes=B.MODES if mode == "both" else (mode,), warmup=warmup,
                              repeats=repeats, check=not no_check, seed=seed)
        if chosen is not None:
            settings.impls = chosen
        for c in cases:  # refuse before running anything
            B.check_fits(c, settings.modes, settings.check)
        meta = B.machine_info(device)
        meta["command"] = _command_line(click.get_current_context())
        meta["suite"] = suite
        results = []
        for c in cases:
            results += B.run_case(c, settings, chosen,
                                  log=lambda m: click.echo(m, err=True))
    except B.BenchError as error:
        raise click.ClickException(str(error)) from None
    click.echo(B.header(meta))
    click.echo(B.table(results))
    if json_path:
        B.write_json(json_path, results, meta)
    if csv_path:
        B.write_csv(csv_path, results)
    if plot_path:
        try:
            B.write_plot(plot_path, results)
        except B.BenchError as error:
            raise click.ClickException(str(error)) from None


# ---- training, evaluation, sampling, plots (the logic lives in rnnkit.train / rnnkit.plot) ----
@contextlib.contextmanager
def _user_errors():
    """Turn rnnkit's UserError (bad files, options, run folders) into a one-line ClickException."""
    from .data import UserError

    try:
        yield
    except UserError as e:
        raise click.ClickException(str(e)) from None


def _default(name: str):
    from .config import TrainConfig

    return getattr(TrainConfig, name)


def _choice(name: str) -> click.Choice:
    """The values of a TrainConfig field with a fixed set (config.CHOICES)."""
    from .config import CHOICES

    return click.Choice(CHOICES[name])


def _bounded(name: str) -> click.ParamType:
    """IntRange or FloatRange of a numeric TrainConfig field, from config.BOUNDS (the same bounds
    from_json holds a saved config.json to)."""
    import typing

    from .config import BOUNDS, TrainConfig, field_type

    low, high, low_open, high_open = BOUNDS[name]
    kind = field_type(typing.get_type_hints(TrainConfig)[name])
    cls = click.IntRange if kind is int else click.FloatRange
    return cls(low, high, min_open=low_open, max_open=high_open)


IMPLS = _choice("impl")
DEVICES = _choice("device")
FILE = click.Path(exists=True, dir_okay=False)
RUN = click.Path(exists=True, file_okay=False)


@main.command()
@click.option("--task", type=_choice("task"), default=_default("task"),
              help="charlm: character LM on a text; classify: CSV/TSV rows; tag: CoNLL tokens; "
                   "adding / copy: synthetic long-range tasks; seq2seq: spell numbers out in "
                   "words (encoder-decoder).")
@click.option("--data", type=FILE, default=None,
              help="Training data (charlm: UTF-8 text, default: bundled Tiny Shakespeare; "
                   "classify: CSV/TSV; tag: CoNLL).")
@click.option("--valid-data", type=FILE, default=None,
              help="Separate validation file (classify, tag); default: split --data.")
@click.option("--valid-fraction", type=_bounded("valid_fraction"),
              default=_default("valid_fraction"), help="Share of the data held out for validation.")
@click.option("--text-column", default=_default("text_column"), help="classify: text column.")
@click.option("--label-column", default=_default("label_column"), help="classify: label column.")
@click.option("--tokens", type=_choice("tokens"), default=_default("tokens"),
              help="classify: split texts into words or characters.")
@click.option("--seq-len", type=_bounded("seq_len"), default=None,
              help="charlm: BPTT chunk (64); adding/copy: sequence length (50/20); "
                   "classify: max tokens (400); seq2seq: most digits of a number (6).")
@click.option("--cell", type=_choice("cell"), default=_default("cell"),
              help="Recurrent cell.")
@click.option("--impl", type=IMPLS, default=_default("impl"),
              help="Recurrent layer: rnnkit's fused kernels, torch.nn, or the plain-PyTorch "
                   "reference loop.")
@click.option("--hidden-size", type=_bounded("hidden_size"), default=_default("hidden_size"),
              help="Hidden units per layer and direction.")
@click.option("--num-layers", type=_bounded("num_layers"), default=_default("num_layers"),
              help="Stacked recurrent layers.")
@click.option("--embed-size", type=_bounded("embed_size"), default=_default("embed_size"),
              help="Symbol embedding width.")
@click.option("--dropout", type=_bounded("dropout"),
              default=_default("dropout"), help="Dropout on embeddings, between layers, before "
                                                "the output layer.")
@click.option("--bidirectional/--unidirectional", default=None,
              help="Bidirectional layers [default: bidirectional for tag only].")
@click.option("--batch-size", type=_bounded("batch_size"), default=_default("batch_size"),
              help="Sequences (charlm: parallel text streams) per step and process.")
@click.option("--steps", type=_bounded("steps"), default=None,
              help="Optimiser steps [default: 500, or from --epochs]. With --resume: where to "
                   "stop; the learning-rate schedule keeps the run's first length (steps past "
                   "it run at the cosine floor).")
@click.option("--epochs", type=_bounded("epochs"), default=None,
              help="Passes over the training data (instead of --steps).")
@click.option("--lr", type=_bounded("lr"), default=_default("lr"),
              help="Peak learning rate (AdamW).")
@click.option("--warmup-steps", type=_bounded("warmup_steps"), default=_default("warmup_steps"),
              help="Linear learning-rate warm-up steps.")
@click.option("--min-lr-ratio", type=_bounded("min_lr_ratio"), default=_default("min_lr_ratio"),
              help="Final learning rate of the cosine decay, as a fraction of --lr.")
@click.option("--weight-decay", type=_bounded("weight_decay"), default=_default("weight_decay"),
              help="AdamW weight decay on weight matrices.")
@click.option("--grad-clip", type=_bounded("grad_clip"), default=_default("grad_clip"),
              help="Clip the global gradient norm to this (0: off).")
@click.option("--eval-every", type=_bounded("eval_every"), default=_default("eval_every"),
              help="Validate and save a checkpoint every this many steps.")
@click.option("--log-every", type=_bounded("log_every"), default=_default("log_every"),
              help="Write the training loss to metrics.jsonl every this many steps.")
@click.option("--seed", type=int, default=_default("seed"), help="Seed of weights, dropout "
                                                                  "and data order.")
@click.option("--device", type=DEVICES, default=_default("device"),
              help="Where to train (auto: a GPU if torch sees one).")
@click.option("--threads", type=_bounded("threads"), default=None,
              help="CPU threads for torch [default: torch's choice].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder to create [default: runs/<task>-<date>-<time>].")
@click.option("--resume", type=RUN, default=None,
              help="Continue the run in this folder exactly where its last checkpoint left off.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train(ctx: click.Context, resume: str | None, quiet: bool, **options) -> None:
    """Train a model on a task and save a run folder (checkpoints, metrics, config).

    With no options: a character-level LSTM on the bundled Tiny Shakespeare corpus, about two
    minutes on two CPU cores. Ctrl-C saves a checkpoint; continue with --resume RUN_DIR.
    Multi-process: torchrun --nproc-per-node N -m rnnkit train ... (resume with the same N).
    """
    from click.core import ParameterSource

    if options["steps"] is not None and options["epochs"] is not None:
        raise click.BadParameter("give --steps or --epochs, not both", param_hint="--steps")
    with _user_errors():
        from .train import TrainConfig, resume_config
        from .train import train as run_training

        if resume:
            given = {k: v for k, v in options.items()
                     if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
            if "out" in given and os.path.abspath(given["out"]) != os.path.abspath(resume):
                raise click.BadParameter("--resume continues in its own folder", param_hint="--out")
            config = resume_config(resume, given)
        else:
            config = TrainConfig(**options)
        lead = os.environ.get("RANK", "0") == "0"
        result = run_training(config, resume=bool(resume), progress=not quiet,
                              echo=click.echo if lead else (lambda s: None))
    if result.interrupted:
        if lead:
            click.echo(f"interrupted ({result.interrupted}) at step {result.step}/"
                       f"{result.total_steps}; checkpoint saved in {result.run_dir}\n"
                       f"resume with: {result.resume_command}", err=True)
        ctx.exit(130)
    if not lead:
        return
    best = result.best
    click.echo(f"done: {result.step} steps in {result.seconds:.1f} s "
               f"({result.tokens_per_second:,.0f} tokens/s); best valid loss "
               f"{best.get('loss', float('nan')):.4f} at step {best.get('step')}; "
               f"run folder {result.run_dir}")


@main.command(name="eval")
@click.argument("run_dir", type=RUN)
@click.option("--data", type=FILE, default=None,
              help="Evaluate on this file instead of the run's validation split.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              help="Which checkpoint of the run.")
@click.option("--impl", type=IMPLS, default=None,
              help="Recurrent implementation [default: the run's].")
@click.option("--device", type=DEVICES, default="auto", help="Where to evaluate.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_(run_dir: str, data: str | None, checkpoint: str, impl: str | None, device: str,
          as_json: bool) -> None:
    """Evaluate a run's checkpoint on its validation split or on --data.

    charlm: loss, perplexity, bits per character; classify / tag: accuracy, macro-F1;
    adding: mean squared error beside the trivial baseline; copy: symbol accuracy;
    seq2seq: exact match and token accuracy of greedy decoding.
    """
    with _user_errors():
        from .train import evaluate_run

        metrics = evaluate_run(run_dir, data, impl, checkpoint, device)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    for key, value in metrics.items():
        click.echo(f"{key:<14} {value:.4f}" if isinstance(value, float) else f"{key:<14} {value}")


@main.command()
@click.argument("run_dir", type=RUN)
@click.option("--prompt", default="\n", show_default="a line break",
              help="Text to start from (seq2seq: numbers in digits, separated by spaces).")
@click.option("--length", type=click.IntRange(0), default=500, help="Characters to sample.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=0.8,
              help="Sampling temperature (lower: safer, higher: wilder).")
@click.option("--top-k", type=click.IntRange(1), default=None,
              help="Sample among the K likeliest characters only.")
@click.option("--seed", type=int, default=None, help="Seed of the sampling [default: fresh].")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              help="Which checkpoint of the run.")
@click.option("--impl", type=IMPLS, default=None,
              help="Recurrent implementation [default: the run's].")
@click.option("--device", type=DEVICES, default="cpu", help="Where to sample.")
def generate(run_dir: str, prompt: str, length: int, temperature: float, top_k: int | None,
             seed: int | None, checkpoint: str, impl: str | None, device: str) -> None:
    """Sample text from a charlm run, printing characters as they come.

    A seq2seq run instead spells out each number of --prompt, greedily decoded, one
    "NUMBER -> words" line each (--length, --temperature, --top-k and --seed do not apply).
    """
    with _user_errors():
        from .train import generate as sample
        from .train import run_task, translate

        if run_task(run_dir) == "seq2seq":
            for number, words in translate(run_dir, prompt, impl, checkpoint, device):
                click.echo(f"{number} -> {words}")
            return

        chars = sample(run_dir, prompt, length, temperature, top_k, seed, impl, checkpoint,
                       device)
        first = next(chars, None)  # surfaces bad input before anything is printed
        click.echo(prompt, nl=False)
        if first is not None:
            click.echo(first, nl=False)
        for ch in chars:
            click.echo(ch, nl=False)
        click.echo()


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=RUN)
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="PNG to write [default: RUN_DIR/curves.png for one run, curves.png for "
                   "several].")
def plot(run_dirs: tuple[str, ...], out: str | None) -> None:
    """Draw training and validation loss curves of one or more runs to a PNG."""
    with _user_errors():
        from .plot import plot_runs

        path = plot_runs(list(run_dirs), out)
    click.echo(f"wrote {path}")


# ---- lessons (the logic lives in rnnkit.gradflow, rnnkit.longrange, rnnkit.gates) -------------
CELL_NAMES = ("rnn", "lstm", "gru")


def _cell_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in CELL_NAMES]
    if bad or not names:
        raise click.BadParameter(f"expected a comma-separated list of {', '.join(CELL_NAMES)}, "
                                 f"got {value!r}")
    return names


def _png_note(path: str | None, draw) -> None:
    """Draw a PNG with ``draw(path)``, or say in one line why it was skipped."""
    from .plot import matplotlib_missing

    if path is None:
        return
    reason = matplotlib_missing()
    if reason:
        click.echo(f"PNG skipped ({path}): {reason}")
        return
    draw(path)
    click.echo(f"wrote {path}")


def _write_text(path: str, text: str) -> None:
    from .data import UserError

    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
    click.echo(f"wrote {path}")


def _write_json(path: str, data: dict, indent: int | None = 1) -> None:
    _write_text(path, json.dumps(data, indent=indent) + "\n")


def _lesson_training_options(command):
    """--seed, --impl and --threads of the lesson commands that train small models."""
    for option in reversed([
        click.option("--seed", type=int, default=_default("seed"),
                     help="Seed of weights and data."),
        click.option("--impl", type=IMPLS, default="fused",
                     help="Recurrent implementation for training."),
        click.option("--threads", type=click.IntRange(1), default=1,
                     help="CPU threads for torch (one is fastest for layers this small, most of "
                          "all on a busy machine)."),
    ]):
        command = option(command)
    return command


@main.command()
@click.option("--task", type=click.Choice(["adding", "copy"]), default="adding",
              help="The long-range task the models learn and are measured on.")
@click.option("--seq-len", type=click.IntRange(2), default=100,
              help="Sequence length T (copy: the delay).")
@click.option("--cells", default="rnn,lstm,gru", callback=_cell_list,
              help="Cells to train and measure, comma-separated.")
@click.option("--hidden-size", type=click.IntRange(1), default=64)
@click.option("--batch-size", type=click.IntRange(1), default=64, help="Training batch.")
@click.option("--steps", type=click.IntRange(1), default=1000, help="Training steps per cell.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.03,
              help="Peak learning rate (AdamW, warm-up and cosine decay as rnnkit train).")
@_lesson_training_options
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
    with _user_errors():
        import torch

        from . import gradflow as G
        from .config import TrainConfig

        torch.set_num_threads(threads)
        base = TrainConfig(task=task, seq_len=seq_len, hidden_size=hidden_size,
                           batch_size=batch_size, steps=steps, lr=lr, seed=seed, impl=impl,
                           threads=threads, eval_every=steps)
        curves = G.gradflow(base, cells, runs, keep_runs, sequences,
                            echo=lambda s: click.echo(s, err=True))
        for line in G.summary(curves):
            click.echo(line)
        _write_json(json_path, G.to_json(curves, None if runs else base, sequences))
        if not no_png:
            _png_note(png, lambda p: G.plot(curves, p))


def _length_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        lengths = [int(n) for n in value.split(",") if n.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 2:
        raise click.BadParameter(f"expected comma-separated lengths of at least 2, got {value!r}")
    return list(dict.fromkeys(lengths))


#: The budget of `rnnkit longrange` per task (found to show the classic result in minutes on two
#: CPU cores; see docs/lessons.md): hidden size, steps, learning rate, batch size.
LONGRANGE_BUDGET = {"adding": (64, 2000, 0.03, 64), "copy": (128, 600, 0.01, 64)}


def _budget_help(field: int) -> str:
    return ", ".join(f"{task} {b[field]}" for task, b in LONGRANGE_BUDGET.items())


@main.command()
@click.option("--task", type=click.Choice(["adding", "copy"]), default="adding",
              help="adding: MSE of the sum of two marked numbers; copy: accuracy of recalling "
                   "ten symbols after a delay.")
@click.option("--lengths", default="50,100,200", callback=_length_list,
              help="Sequence lengths (copy: delays), comma-separated.")
@click.option("--cells", default="rnn,lstm,gru", callback=_cell_list,
              help="Cells, comma-separated.")
@click.option("--hidden-size", type=click.IntRange(1), default=None,
              help=f"Hidden units [default: {_budget_help(0)}].")
@click.option("--steps", type=click.IntRange(1), default=None,
              help=f"Training steps per model [default: {_budget_help(1)}].")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None,
              help=f"Peak learning rate [default: {_budget_help(2)}].")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help=f"Sequences per step [default: {_budget_help(3)}].")
@_lesson_training_options
@click.option("--keep-runs", type=click.Path(file_okay=False), default=None,
              help="Keep the run folders here [default: a temporary folder, removed].")
@click.option("--table", "table_path", type=click.Path(dir_okay=False), default=None,
              help="Markdown file for the table [default: longrange-TASK.md].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="JSON file for every row [default: longrange-TASK.json].")
def longrange(task, lengths, cells, hidden_size, steps, lr, batch_size, seed, impl, threads,
              keep_runs, table_path, json_path) -> None:
    """Lesson: which cells carry information over long sequences, as a paper's table.

    Trains every cell at every length with the same budget (rnnkit train's loop and schedule)
    and reports the final score on held-out sequences beside the score of a model that learned
    nothing: adding: mean squared error vs always predicting 1.0 (about 0.167); copy: symbol
    accuracy vs guessing (1/8). Prints the table as markdown and writes it and the JSON.
    """
    with _user_errors():
        import torch

        from . import longrange as LR
        from .config import TrainConfig

        torch.set_num_threads(threads)
        h, n, rate, batch = LONGRANGE_BUDGET[task]
        base = TrainConfig(task=task, hidden_size=hidden_size or h, steps=steps or n,
                           lr=lr or rate, batch_size=batch_size or batch, seed=seed, impl=impl,
                           threads=threads, eval_every=steps or n)
        rows = LR.longrange(base, lengths, cells, keep_runs,
                            echo=lambda s: click.echo(s, err=True))
        table = LR.markdown(rows, base)
        click.echo(table, nl=False)
        _write_text(table_path or f"longrange-{task}.md", table)
        _write_json(json_path or f"longrange-{task}.json", LR.to_json(rows, base))


@main.command(name="inspect")
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
    with _user_errors():
        from . import gates as GT

        trace = GT.trace_run(run_dir, text, layer, checkpoint)
        chosen = GT.pick_units(trace, count, units)
        if color is None:
            color = sys.stdout.isatty()
        for line in GT.render(trace, chosen[:show] if not units else chosen, width, color):
            click.echo(line, color=color)
        if json_path:
            _write_json(json_path, GT.to_json(trace, chosen), indent=None)
        if not no_png:
            _png_note(png, lambda p: GT.plot(trace, chosen, p))


def run() -> None:  # pragma: no cover - console entry point helper
    main(prog_name="rnnkit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
