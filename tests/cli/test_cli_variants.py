"""rnnkit train's --select-by and layer options from the command line: what the user sees."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rnnkit.cli import main

from ..helpers import one_line_error

TINY = ["--task", "copy", "--hidden-size", "8", "--embed-size", "4", "--batch-size", "4",
        "--seq-len", "5", "--steps", "4", "--eval-every", "2", "--threads", "1", "-q"]


def _train(*args):
    return CliRunner().invoke(main, ["train", *TINY, *args])


@pytest.mark.parametrize("select_by,metric", [(None, "symbol_accuracy"), ("loss", "loss")])
def test_done_line_names_the_metric_that_chose_best(tmp_path, select_by, metric):
    out = tmp_path / "run"
    result = _train("--out", str(out), *(["--select-by", select_by] if select_by else []))
    assert result.exit_code == 0, result.output
    done = [line for line in result.output.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and f"best valid {metric} " in done[0], result.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["select_by"] == metric


def test_bad_select_by_lists_the_task_metrics(tmp_path):
    result = _train("--out", str(tmp_path / "run"), "--select-by", "accuracy")
    line = one_line_error(result, code=2)
    assert "--select-by" in line and "task copy reports symbol_accuracy, loss" in line
    assert not (tmp_path / "run").exists()


def test_layer_options_are_saved(tmp_path):
    out = tmp_path / "run"
    result = _train("--out", str(out), "--weight-drop", "0.25", "--variational-dropout", "0.1",
                    "--chrono", "12", "--cell", "gru")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["weight_drop"], config["variational_dropout"], config["chrono"],
            config["forget_bias"]) == (0.25, 0.1, 12, None)
    again = CliRunner().invoke(main, ["eval", str(out), "--json"])
    assert again.exit_code == 0, again.output


def test_zoneout_trains_evaluates_and_refuses_export(tmp_path):
    out = tmp_path / "run"
    result = _train("--out", str(out), "--zoneout", "0.2")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["config"]["zoneout"] == 0.2
    again = CliRunner().invoke(main, ["eval", str(out), "--json"])
    assert again.exit_code == 0, again.output
    line = one_line_error(CliRunner().invoke(main, ["export", str(out)]))
    assert "--zoneout do not export" in line


@pytest.mark.parametrize("cell,cls", [("layernorm-lstm", "LayerNormLSTM"),
                                      ("layernorm-gru", "LayerNormGRU")])
def test_zoneout_on_the_layernorm_cells_trains_and_survives_resume(tmp_path, cell, cls):
    """--zoneout reaches rnnkit.LayerNormLSTM/GRU (it was refused before they took it), is saved
    in config.json, and a resumed run keeps it."""
    from rnnkit.train.runs import load_run

    out = tmp_path / "run"
    result = _train("--out", str(out), "--cell", cell, "--zoneout", "0.1")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["config"]["zoneout"] == 0.1
    again = CliRunner().invoke(main, ["train", "--resume", str(out), "--steps", "6", "-q"])
    assert again.exit_code == 0, again.output
    assert "at step 4 of 6" in again.output and "done: 6 steps" in again.output, again.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["zoneout"], config["cell"]) == (0.1, cell)
    _, _, model, _ = load_run(str(out))
    assert type(model.rnn).__name__ == cls and model.rnn.zoneout == 0.1
    assert getattr(model.rnn, "zoneout_cell", None) == (0.1 if cell == "layernorm-lstm" else None)


@pytest.mark.parametrize("args,words,code", [
    (["--weight-drop", "1"], "--weight-drop", 2),
    (["--chrono", "2"], "--chrono", 2),
    (["--forget-bias", "nan"], "--forget-bias", 2),
    (["--weight-drop", "0.1", "--impl", "torch"], "--weight-drop: the torch LSTM layer", 1),
    (["--zoneout", "1"], "--zoneout", 2),
    (["--zoneout", "0.1", "--impl", "torch"], "--zoneout: the torch LSTM layer", 1),
    (["--forget-bias", "1", "--cell", "rnn"], "need a gated cell", 1),
    (["--forget-bias", "1", "--chrono", "9"], "both set the forget gate's bias", 1),
])
def test_bad_layer_options_are_one_line_errors(tmp_path, args, words, code):
    line = one_line_error(_train("--out", str(tmp_path / "run"), *args), code=code)
    assert words in line
