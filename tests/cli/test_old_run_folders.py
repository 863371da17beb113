"""Run folders written before the package was split into rooms (tests/data/run-2026-11-30: a tiny
charlm LSTM, 20 steps, made by `rnnkit train` of 2026-11-30 with --impl fused) still evaluate,
generate and resume; and the older spelling `fused` is still taken on the command line."""

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from rnnkit.cli import main

OLD_RUN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                       "run-2026-11-30")


def recorded_valid_loss() -> tuple[int, float]:
    """(step, loss) of the last validation the old code wrote into the run's metrics.jsonl."""
    with open(os.path.join(OLD_RUN, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    last = [r for r in rows if r["split"] == "valid"][-1]
    return last["step"], last["loss"]


@pytest.fixture
def old_run(tmp_path):
    """A copy, so that resuming does not write into the committed fixture."""
    copy = tmp_path / "run"
    shutil.copytree(OLD_RUN, copy)
    return str(copy)


def test_the_fixture_was_written_with_the_old_implementation_name():
    with open(os.path.join(OLD_RUN, "config.json")) as f:
        assert json.load(f)["config"]["impl"] == "fused"


@pytest.mark.parametrize("impl", [[], ["--impl", "fused"], ["--impl", "rnnkit"],
                                  ["--impl", "reference"]])
def test_an_old_run_evaluates_to_the_loss_it_recorded(old_run, impl):
    r = CliRunner().invoke(main, ["eval", old_run, "--device", "cpu", "--json", *impl])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.output)
    step, loss = recorded_valid_loss()
    assert metrics["step"] == step and metrics["task"] == "charlm"
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)


def test_an_old_run_generates(old_run):
    with open(os.path.join(old_run, "vocab.json")) as f:
        vocab = set(json.load(f)["vocab"]["itos"])
    r = CliRunner().invoke(main, ["generate", old_run, "--prompt", "KING", "--length", "40",
                                  "--seed", "3"])
    assert r.exit_code == 0, r.output
    text = r.output.rstrip("\n")
    assert text.startswith("KING") and len(text) == 4 + 40
    assert set(text[4:]) <= vocab


def test_an_old_run_resumes(old_run):
    step, _ = recorded_valid_loss()
    r = CliRunner().invoke(main, ["train", "--resume", old_run, "--steps", str(step + 4),
                                  "--eval-every", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert f"resuming {old_run} at step {step}" in r.output
    with open(os.path.join(old_run, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if line.strip()]
    assert max(steps) == step + 4
    r = CliRunner().invoke(main, ["eval", old_run, "--checkpoint", "last", "--device", "cpu",
                                  "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["step"] == step + 4, r.output


def test_resuming_with_the_old_name_is_no_contradiction(old_run):
    """--impl may change on resume; the old name and the new one are the same implementation."""
    step, _ = recorded_valid_loss()
    r = CliRunner().invoke(main, ["train", "--resume", old_run, "--steps", str(step + 1),
                                  "--impl", "fused", "-q"])
    assert r.exit_code == 0, r.output
