"""rnnkit bench: the options of a benchmark, handed to rnnkit.bench (which holds the suites and
the logic). torch is imported inside the command, so --help needs none.
"""

from __future__ import annotations

import os

import click

from ..bench.case import IMPL_ALIASES, MODES
from ..bench.case import IMPLS as IMPL_NAMES
from ..bench.suites import SUITES
from ..cells import CELLS
from .common import SEED, command_line

SUITE_NAMES = tuple(SUITES)


def _check_output(path: str | None, option: str) -> None:
    """Refuse, before anything is measured, an output file that could not be written (a missing
    or read-only folder, a folder in its place): found after the run, the timings would be lost."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        problem = "no such folder " + folder
    elif os.path.isdir(path):
        problem = "is a folder"
    elif not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path)
                                                      and not os.access(path, os.W_OK)):
        problem = "not writable"
    else:
        return
    raise click.BadParameter(f"{path}: {problem}", param_hint=option)


def _impl_list(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]):
    names = [IMPL_ALIASES.get(n, n) for n in (n.strip() for v in value for n in v.split(","))
             if n]
    bad = [n for n in names if n not in IMPL_NAMES]
    if value and not names:  # "--impl ," or "--impl ''": not "every implementation"
        raise click.BadParameter(f"expected implementation names, got {', '.join(value)!r}; "
                                 f"valid: {', '.join(IMPL_NAMES)}")
    if bad:
        raise click.BadParameter(f"unknown implementation {', '.join(map(repr, bad))}; valid: "
                                 f"{', '.join(IMPL_NAMES)}")
    return names or None


@click.command()
@click.option("--suite", type=click.Choice(SUITE_NAMES), default=None,
              help="A named set of shapes (else one shape from the options below).")
@click.option("--cell", type=click.Choice(CELLS), default="lstm")
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
@click.option("--seed", type=SEED, default=0)
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
    for path, option in ((json_path, "--json"), (csv_path, "--csv"), (plot_path, "--plot")):
        _check_output(path, option)
    import torch

    from ..bench import machine, report
    from ..bench.case import BenchError, Case, Settings
    from ..bench.run import run_cases
    from ..bench.suites import suite_plan

    if threads:
        if threads > (os.cpu_count() or 1):
            click.echo(f"note: --threads {threads} is more than the {os.cpu_count()} CPU(s) "
                       "here; threads beyond them only wait on each other", err=True)
        torch.set_num_threads(threads)
    try:
        machine.check_device(device)
        if suite:
            cases, chosen, repeats = suite_plan(suite, cell, device, impls, repeats, dtype)
        else:
            if packed_min_len is not None and packed_min_len > seq_len:
                raise click.BadParameter(f"must be at most --seq-len ({seq_len}), got "
                                         f"{packed_min_len}", param_hint="--packed-min-len")
            cases = [Case(cell, seq_len, batch_size, input_size or hidden_size, hidden_size,
                          num_layers, bidirectional, packed_min_len, dtype or "float32",
                          device)]
            chosen, repeats = impls, repeats or 7
        settings = Settings(modes=MODES if mode == "both" else (mode,), warmup=warmup,
                            repeats=repeats, check=not no_check, seed=seed)
        if chosen is not None:
            settings.impls = chosen
        meta = machine.machine_info(device)
        meta["command"] = command_line(click.get_current_context())
        meta["suite"] = suite
        results = run_cases(cases, settings, chosen, log=lambda m: click.echo(m, err=True))
    except BenchError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.header(meta))
    click.echo(report.table(results))
    try:
        if json_path:
            report.write_json(json_path, results, meta)
        if csv_path:
            report.write_csv(csv_path, results)
        if plot_path:
            report.write_plot(plot_path, results)
    except BenchError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"{error.filename}: cannot write ({error.strerror})") from None
    failed = [f"{r.impl} ({r.mode}): {r.status}" for r in results if r.status in ("error", "wrong")]
    if failed:
        raise click.ClickException(f"{len(failed)} implementation(s) failed: "
                                   + "; ".join(failed))
