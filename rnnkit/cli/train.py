"""Commands that train and use models: rnnkit train, eval, generate and plot. The logic lives in
rnnkit.train; torch is imported inside the commands, so --help needs none.
"""

from __future__ import annotations

import json
import os

import click
from click.core import ParameterSource

from ..train.config import SELECTION, TrainConfig
from .common import (DEVICES, FILE, IMPLS, RUN, SEED, FiniteFloatRange, bounded, choice,
                     ctrl_c, default, user_errors)

_SELECT_HELP = "; ".join(f"{task}: {', '.join(metrics)}" for task, metrics in SELECTION.items())


@click.command()
@click.option("--task", type=choice("task"), default=default("task"),
              help="charlm: character LM on a text; classify: CSV/TSV rows; tag: CoNLL tokens; "
                   "adding / copy: synthetic long-range tasks; seq2seq: spell numbers out in "
                   "words (encoder-decoder).")
@click.option("--data", type=FILE, default=None,
              help="Training data (charlm: UTF-8 text, default: bundled Tiny Shakespeare; "
                   "classify: CSV/TSV; tag: CoNLL).")
@click.option("--valid-data", type=FILE, default=None,
              help="Separate validation file (classify, tag); default: split --data.")
@click.option("--valid-fraction", type=bounded("valid_fraction"),
              default=default("valid_fraction"), help="Share of the data held out for validation.")
@click.option("--text-column", default=default("text_column"), help="classify: text column.")
@click.option("--label-column", default=default("label_column"), help="classify: label column.")
@click.option("--tokens", type=choice("tokens"), default=default("tokens"),
              help="classify: split texts into words or characters.")
@click.option("--seq-len", type=bounded("seq_len"), default=None,
              help="charlm: BPTT chunk (64); adding/copy: sequence length (50/20); "
                   "classify: max tokens (400); seq2seq: most digits of a number (6).")
@click.option("--cell", type=choice("cell"), default=default("cell"),
              help="Recurrent cell (layernorm-lstm / layernorm-gru: rnnkit.LayerNormLSTM / "
                   "LayerNormGRU, --impl rnnkit).")
@click.option("--impl", type=IMPLS, default=default("impl"),
              help="Recurrent layer: rnnkit's fused kernels (also accepted: fused, the older "
                   "name), torch.nn, or the plain-PyTorch reference loop.")
@click.option("--hidden-size", type=bounded("hidden_size"), default=default("hidden_size"),
              help="Hidden units per layer and direction.")
@click.option("--num-layers", type=bounded("num_layers"), default=default("num_layers"),
              help="Stacked recurrent layers.")
@click.option("--embed-size", type=bounded("embed_size"), default=default("embed_size"),
              help="Symbol embedding width.")
@click.option("--dropout", type=bounded("dropout"),
              default=default("dropout"), help="Dropout on embeddings, between layers, before "
                                                "the output layer.")
@click.option("--weight-drop", type=bounded("weight_drop"), default=default("weight_drop"),
              help="DropConnect on the recurrent weights W_hh, a fresh mask every step "
                   "(AWD-LSTM; --impl rnnkit).")
@click.option("--variational-dropout", type=bounded("variational_dropout"),
              default=default("variational_dropout"),
              help="Dropout of each recurrent layer's input with one mask per sequence, shared "
                   "by all time steps (--impl rnnkit); adds to --dropout.")
@click.option("--zoneout", type=bounded("zoneout"), default=default("zoneout"),
              help="Zoneout probability of the hidden state (LSTM: and of the cell state).")
@click.option("--forget-bias", type=bounded("forget_bias"), default=None,
              help="Initial forget-gate bias (LSTM f, GRU z) [default: torch.nn's init].")
@click.option("--chrono", type=bounded("chrono"), default=None, metavar="T_MAX",
              help="Chrono initialisation of the gate biases for dependencies up to T_MAX "
                   "steps (Tallec & Ollivier 2018; gated cells).")
@click.option("--bidirectional/--unidirectional", default=None,
              help="Bidirectional layers [default: bidirectional for tag only].")
@click.option("--batch-size", type=bounded("batch_size"), default=default("batch_size"),
              help="Sequences (charlm: parallel text streams) per step and process.")
@click.option("--steps", type=bounded("steps"), default=None,
              help="Optimiser steps [default: 500, or from --epochs]. With --resume: where to "
                   "stop; the learning-rate schedule keeps the run's first length (steps past "
                   "it run at the cosine floor).")
@click.option("--epochs", type=bounded("epochs"), default=None,
              help="Passes over the training data (instead of --steps).")
@click.option("--lr", type=bounded("lr"), default=default("lr"),
              help="Peak learning rate (AdamW).")
@click.option("--warmup-steps", type=bounded("warmup_steps"), default=default("warmup_steps"),
              help="Linear learning-rate warm-up steps.")
@click.option("--min-lr-ratio", type=bounded("min_lr_ratio"), default=default("min_lr_ratio"),
              help="Final learning rate of the cosine decay, as a fraction of --lr.")
@click.option("--weight-decay", type=bounded("weight_decay"), default=default("weight_decay"),
              help="AdamW weight decay on weight matrices.")
@click.option("--grad-clip", type=bounded("grad_clip", inf_means=0.0),
              default=default("grad_clip"),
              help="Clip the global gradient norm to this (0 or inf: no clipping).")
@click.option("--eval-every", type=bounded("eval_every"), default=default("eval_every"),
              help="Validate and save a checkpoint every this many steps.")
@click.option("--select-by", default=None, metavar="METRIC",
              help="Validation metric that chooses best.safetensors [default: the task's own, "
                   f"listed first: {_SELECT_HELP}].")
@click.option("--log-every", type=bounded("log_every"), default=default("log_every"),
              help="Write the training loss to metrics.jsonl every this many steps.")
@click.option("--seed", type=bounded("seed"), default=default("seed"),
              help="Seed of weights, dropout and data order.")
@click.option("--device", type=DEVICES, default=default("device"),
              help="Where to train (auto: a GPU if torch sees one).")
@click.option("--threads", type=bounded("threads"), default=None,
              help="CPU threads for torch [default: torch's choice].")
@click.option("--precision", type=choice("precision"), default=default("precision"),
              help="Arithmetic of the training forward: fp32, or bf16 (torch.autocast to "
                   "bfloat16; weights and optimiser stay float32). auto: bf16 where the device "
                   "multiplies bfloat16 in hardware and bf16 was measured to train as well "
                   "(docs/training.md: not yet, so fp32). The run records the one used.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder to create [default: runs/<task>-<date>-<time>].")
@click.option("--resume", type=RUN, default=None,
              help="Continue the run in this folder exactly where its last checkpoint left off.")
@click.option("--allow-changed-data", is_flag=True,
              help="With --resume: go on although the data files differ from the run's.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train(ctx: click.Context, resume: str | None, quiet: bool, allow_changed_data: bool,
          **options) -> None:
    """Train a model on a task and save a run folder (checkpoints, metrics, config).

    With no options: a character-level LSTM on the bundled Tiny Shakespeare corpus, about two
    minutes on two CPU cores. Ctrl-C saves a checkpoint; continue with --resume RUN_DIR.
    Multi-process: torchrun --nproc-per-node N -m rnnkit train ... (resume with the same N).
    """
    if options["steps"] is not None and options["epochs"] is not None:
        raise click.BadParameter("give --steps or --epochs, not both", param_hint="--steps")
    if options["bidirectional"] and options["task"] == "charlm" and not resume:
        raise click.BadParameter("makes no sense for a language model (--task charlm)",
                                 param_hint="--bidirectional")
    if options["select_by"] is not None and not resume:
        reported = SELECTION[options["task"]]
        if options["select_by"] not in reported:
            raise click.BadParameter(f"task {options['task']} reports {', '.join(reported)}; "
                                     f"got {options['select_by']!r}", param_hint="--select-by")
    if options["valid_data"] and options["task"] == "charlm" and not resume:
        raise click.BadParameter("charlm validates on the end of --data (--valid-fraction); "
                                 "join the two texts, or drop --valid-data",
                                 param_hint="--valid-data")
    with user_errors():
        from ..train.runs import resume_config
        from ..train.trainer import train as run_training

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
                              echo=click.echo if lead else (lambda s: None),
                              allow_changed_data=allow_changed_data,
                              should_stop=lambda step: ctrl_c.pressed)  # pressed at start-up
    if result.interrupted:
        if lead:
            click.echo(f"interrupted ({result.interrupted}) at step {result.step}/"
                       f"{result.total_steps}; checkpoint saved in {result.run_dir}\n"
                       f"resume with: {result.resume_command}", err=True)
        ctx.exit(130)
    if not lead:
        return
    from ..train.selection import Selection

    best = result.best
    selection = Selection.of(config.task, best.get("select_by", config.select_by))
    click.echo(f"done: {result.step} steps in {result.seconds:.1f} s "
               f"({result.tokens_per_second:,.0f} tokens/s); best valid "
               f"{selection.describe(best)}; run folder {result.run_dir}")


@click.command(name="eval")
@click.argument("run_dir", type=RUN)
@click.option("--data", type=FILE, default=None,
              help="Evaluate on this file instead of the run's validation split.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              help="Which checkpoint of the run.")
@click.option("--impl", type=IMPLS, default=None,
              help="Recurrent implementation [default: the run's].")
@click.option("--device", type=DEVICES, default="auto", help="Where to evaluate.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--allow-changed-data", is_flag=True,
              help="Evaluate although the run's data files changed since training.")
def eval_(run_dir: str, data: str | None, checkpoint: str, impl: str | None, device: str,
          as_json: bool, allow_changed_data: bool) -> None:
    """Evaluate a run's checkpoint on its validation split or on --data.

    charlm: loss, perplexity, bits per character; classify / tag: accuracy, macro-F1;
    adding: mean squared error beside the trivial baseline; copy: symbol accuracy;
    seq2seq: exact match and token accuracy of greedy decoding.
    """
    with user_errors():
        from ..train.runs import evaluate_run

        metrics = evaluate_run(run_dir, data, impl, checkpoint, device, allow_changed_data,
                               echo=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    for key, value in metrics.items():
        click.echo(f"{key:<14} {value:.4f}" if isinstance(value, float) else f"{key:<14} {value}")


@click.command()
@click.argument("run_dir", type=RUN)
@click.option("--prompt", default=None, show_default="a line break (charlm)",
              help="Text to start from (seq2seq: numbers in digits, separated by spaces).")
@click.option("--length", type=click.IntRange(0), default=500, help="Characters to sample.")
@click.option("--temperature", type=FiniteFloatRange(0, min_open=True), default=0.8,
              help="Sampling temperature (lower: safer, higher: wilder).")
@click.option("--top-k", type=click.IntRange(1), default=None,
              help="Sample among the K likeliest characters only.")
@click.option("--seed", type=SEED, default=None, help="Seed of the sampling [default: fresh].")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              help="Which checkpoint of the run.")
@click.option("--impl", type=IMPLS, default=None,
              help="Recurrent implementation [default: the run's].")
@click.option("--device", type=DEVICES, default="cpu", help="Where to sample.")
@click.option("--onnx", type=FILE, default=None,
              help="Step through this ONNX file of the run (rnnkit export RUN_DIR) in "
                   "onnxruntime on the CPU instead of PyTorch (--impl and --device do not "
                   "apply): the same text for the same seed.")
def generate(run_dir: str, prompt: str | None, length: int, temperature: float, top_k: int | None,
             seed: int | None, checkpoint: str, impl: str | None, device: str,
             onnx: str | None) -> None:
    """Sample text from a charlm run, printing characters as they come.

    A seq2seq run instead spells out each number of --prompt, greedily decoded, one
    "NUMBER -> words" line each (--length, --temperature, --top-k and --seed do not apply).
    """
    with user_errors():
        from ..train.runs import generate as sample
        from ..train.runs import run_task, translate

        if run_task(run_dir) == "seq2seq":
            if onnx:
                raise click.BadParameter("seq2seq runs do not export; --onnx takes a charlm "
                                         "run's step model", param_hint="--onnx")
            if prompt is None:
                raise click.UsageError("a seq2seq run spells out numbers: give them with "
                                       "--prompt, e.g. --prompt '12 345'")
            for number, words in translate(run_dir, prompt, impl, checkpoint, device):
                click.echo(f"{number} -> {words}")
            return

        prompt = "\n" if prompt is None else prompt
        chars = sample(run_dir, prompt, length, temperature, top_k, seed, impl, checkpoint,
                       device, onnx)
        first = next(chars, None)  # surfaces bad input before anything is printed
        click.echo(prompt, nl=False)
        if first is not None:
            click.echo(first, nl=False)
        for ch in chars:
            click.echo(ch, nl=False)
        click.echo()


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=RUN)
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="PNG to write [default: RUN_DIR/curves.png for one run, curves.png for "
                   "several].")
def plot(run_dirs: tuple[str, ...], out: str | None) -> None:
    """Draw training and validation loss curves of one or more runs to a PNG."""
    with user_errors():
        from ..train.plot import plot_runs

        path = plot_runs(list(run_dirs), out)
    click.echo(f"wrote {path}")
