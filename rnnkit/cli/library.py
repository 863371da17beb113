"""Commands about the library itself: rnnkit info (how it was built) and rnnkit check (every
compiled operator against the reference). torch is imported inside them, so --help needs none.
"""

from __future__ import annotations

import json

import click

from .common import SEED, ctrl_c


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(as_json: bool) -> None:
    """Print how rnnkit was built and what it can use here (the CPU's bfloat16 features too)."""
    from .._library import build_info
    from ..hardware import cpu_bf16_features

    data = build_info()
    data["cpu_bf16_features"] = cpu_bf16_features()
    data.setdefault("cpu_bf16_path", "not built")  # the bfloat16 products of the CPU kernels
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_present(v)}" for k, v in value.items())
        click.echo(f"{key:<{width}}  {value}")
    if "cuda" in data["backends"] and not data["gpus_visible"]:
        click.echo("note: CUDA kernels were built, but no GPU is visible here")


def _present(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


@click.command()
@click.option("--device", type=click.Choice(["all", "cpu", "cuda"]), default="all",
              help="Which compiled backend to verify.")
@click.option("--dtype", type=click.Choice(["all", "float64", "bfloat16"]), default="all",
              help="float64 (to 1e-10), bfloat16 (within twice the reference's own bfloat16 "
                   "error of float64, plus a floor), or both.")
@click.option("--seed", type=SEED, default=None, help="Seed of the random inputs (default: fresh).")
@click.option("--no-gradcheck", is_flag=True, help="Skip torch.autograd.gradcheck (faster).")
@click.option("--no-opcheck", is_flag=True, help="Skip torch.library.opcheck (faster).")
def check(device: str, dtype: str, seed: int | None, no_gradcheck: bool,
          no_opcheck: bool) -> None:
    """Verify every compiled operator against the reference, in float64 and bfloat16.

    Checks values, gradients, gradcheck (float64) and opcheck on fresh random inputs; prints one
    line per operator, configuration, dtype and device; exits 1 on any failure.
    """
    import torch

    from .. import check as C
    from .._library import build_info

    available = C.devices()
    if device == "cuda" and "cuda" not in available:
        reason = ("no GPU is visible" if build_info()["cuda_archs"]
                  else "the CUDA kernels were not built (rebuild with RNNKIT_CUDA=1)")
        raise click.ClickException(f"cannot check cuda: {reason}")
    chosen = available if device == "all" else [device]
    dtypes = C.DTYPES if dtype == "all" else (getattr(torch, dtype),)
    failures = 0
    for dev in chosen:
        for dt in dtypes:
            for case in C.cases(dev, dt, seed):
                r = C.run_case(case, gradcheck=not no_gradcheck, opcheck=not no_opcheck)
                if ctrl_c.pressed:  # a check may have swallowed its KeyboardInterrupt
                    raise KeyboardInterrupt
                failures += not r.ok
                mark = "ok  " if r.ok else "FAIL"
                name = str(dt).removeprefix("torch.")
                click.echo(f"{mark} {case.name:<10} {dev:<5} {name:<9} {case.label:<32} "
                           f"{r.detail} ({r.seconds:.2f} s)")
    if "cuda" not in chosen:
        click.echo("cuda: not checked (" + ("no GPU visible" if build_info()["cuda_archs"]
                                           else "CUDA kernels not built") + ")")
    if failures:
        raise click.ClickException(f"{failures} check(s) failed")
    click.echo("all checks passed")
