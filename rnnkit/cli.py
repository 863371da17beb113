"""rnnkit's command line. Parses options, builds a config, calls the library: no logic of its own.

torch is imported inside the commands, so ``rnnkit --help`` answers at once.
"""

from __future__ import annotations

import json
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


def run() -> None:  # pragma: no cover - console entry point helper
    main(prog_name="rnnkit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
