"""rnnkit train --precision: offered in --help, recorded in the run's config.json as the precision
used, kept on resume (a contradicting one is a one-line error); eval and generate of a bf16 run."""

import json
import os

import pytest
from click.testing import CliRunner

from rnnkit.cli import main

from ..helpers import one_line_error
from .test_cli_train import TINY, corpus  # noqa: F401  (corpus is a fixture)


def test_help_offers_the_precisions():
    r = CliRunner().invoke(main, ["train", "--help"])
    assert r.exit_code == 0
    assert "--precision [auto|fp32|bf16]" in r.output


def test_an_unknown_precision_exits_2():
    r = CliRunner().invoke(main, ["train", "--precision", "fp16"])
    assert r.exit_code == 2 and "'fp16' is not one of 'auto', 'fp32', 'bf16'" in r.output


def _saved_precision(run: str) -> str:
    with open(os.path.join(run, "config.json")) as f:
        return json.load(f)["config"]["precision"]


@pytest.mark.parametrize("impl", ["rnnkit", "torch"])
def test_bf16_is_recorded_kept_on_resume_and_the_run_evaluates(corpus, tmp_path, impl):  # noqa: F811
    run = str(tmp_path / "run")
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--data", corpus, "--steps", "2", "--eval-every", "2",
                             "--out", run, "--impl", impl, "--precision", "bf16", *TINY])
    assert r.exit_code == 0, r.output
    assert _saved_precision(run) == "bf16"
    line = one_line_error(runner.invoke(main, ["train", "--resume", run, "--steps", "4",
                                               "--precision", "fp32", "-q"]))
    assert "--precision fp32 (saved: bf16)" in line
    r = runner.invoke(main, ["train", "--resume", run, "--steps", "4", "-q"])
    assert r.exit_code == 0, r.output
    assert _saved_precision(run) == "bf16"
    r = runner.invoke(main, ["eval", run, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["loss"] > 0, r.output
    r = runner.invoke(main, ["generate", run, "--length", "10", "--seed", "1"])
    assert r.exit_code == 0 and len(r.output) >= 10, r.output


def test_the_default_is_recorded_as_what_auto_chose(corpus, tmp_path):  # noqa: F811
    import torch

    from rnnkit.train.precision import resolve_precision

    run = str(tmp_path / "run")
    r = CliRunner().invoke(main, ["train", "--data", corpus, "--steps", "1", "--out", run, *TINY])
    assert r.exit_code == 0, r.output
    assert _saved_precision(run) == resolve_precision("auto", torch.device("cpu"))
