"""rnnkit longrange: a tiny table end to end; every row carries its no-learning baseline."""

import json
import re

import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.train.config import TrainConfig
from rnnkit.train.registry import build_task

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = ["--hidden-size", "6", "--steps", "3", "--batch-size", "8", "--threads", "1"]


def test_adding_table(tmp_path):
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    r = CliRunner().invoke(main, ["longrange", "--task", "adding", "--lengths", "6,10",
                                  "--cells", "rnn,lstm", *TINY, "--table", str(md),
                                  "--json", str(js), "--keep-runs", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    rows = json.loads(js.read_text())["rows"]
    assert [(row["seq_len"], row["cell"]) for row in rows] == [(6, "rnn"), (6, "lstm"),
                                                               (10, "rnn"), (10, "lstm")]
    for row in rows:
        # the baseline is the MSE of always answering 1.0 on the same validation sequences
        task = build_task(TrainConfig(task="adding", seq_len=row["seq_len"]).resolved())
        expected = float(((task.valid.y - 1.0) ** 2).mean())
        assert row["baseline"] == pytest.approx(expected, rel=1e-6)
        assert 0.12 < row["baseline"] < 0.22
        assert row["metric"] == "mse" and row["value"] == row["valid"]["mse"] > 0
        assert (tmp_path / "runs" / f"adding-{row['cell']}-T{row['seq_len']}").is_dir()
    table = md.read_text()
    assert table in r.output
    lines = table.splitlines()
    assert lines[0].startswith("| test MSE") and "T = 6 | T = 10 |" in lines[0]
    assert lines[2].startswith("| tanh RNN |") and lines[3].startswith("| LSTM |")
    assert lines[4] == (f"| baseline: always predict 1.0 | {rows[0]['baseline']:.4f} | "
                        f"{rows[2]['baseline']:.4f} |")
    assert f"{rows[1]['value']:.4f}" in lines[3]


def test_copy_table_reports_accuracy_beside_chance(tmp_path):
    md, js = tmp_path / "c.md", tmp_path / "c.json"
    r = CliRunner().invoke(main, ["longrange", "--task", "copy", "--lengths", "3",
                                  "--cells", "gru", *TINY, "--table", str(md), "--json", str(js)])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(js.read_text())["rows"]
    assert row["metric"] == "symbol_accuracy" and row["baseline"] == 0.125
    assert 0 <= row["value"] <= 1
    assert "| baseline: guess (1/8) | 12.5% |" in md.read_text()


@pytest.mark.parametrize("args,message", [
    (["--lengths", "50,x"], "expected comma-separated lengths"),
    (["--lengths", "1"], "expected comma-separated lengths"),
    (["--cells", "lstm,transformer"], "expected a comma-separated list of lstm, gru, rnn, "
                                      "layernorm-lstm, layernorm-gru"),
])
def test_bad_options(args, message):
    r = CliRunner().invoke(main, ["longrange", *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_same_budget_for_every_model(tmp_path):
    js = tmp_path / "b.json"
    r = CliRunner().invoke(main, ["longrange", "--lengths", "4", "--cells", "rnn,gru", *TINY,
                                  "--lr", "0.003", "--table", str(tmp_path / "b.md"),
                                  "--json", str(js), "--keep-runs", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    configs = [json.loads((tmp_path / "runs" / f"adding-{c}-T4" / "config.json").read_text())
               ["config"] for c in ("rnn", "gru")]
    for key in ("hidden_size", "steps", "lr", "seed", "batch_size", "impl", "seq_len"):
        assert configs[0][key] == configs[1][key], key
    assert configs[0]["lr"] == 0.003 and configs[0]["hidden_size"] == 6


def test_lesson_help_does_not_import_torch():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys; from rnnkit.cli import main\n"
            "for cmd in ('gradflow', 'longrange', 'inspect'):\n"
            "    sys.argv = ['rnnkit', cmd, '--help']\n"
            "    try: main()\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"adding\s+2000,\s+copy\s+1600", r.stdout) and "--keep-runs" in r.stdout


def test_flush_denormals_is_undone():
    import torch

    from rnnkit.lessons.gradflow import flush_denormals

    tiny = torch.tensor([1e-40])  # a float32 subnormal
    with flush_denormals():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() > 0.0


def test_an_interrupted_training_stops_the_table(monkeypatch, tmp_path):
    import rnnkit.lessons.longrange
    from rnnkit.lessons.longrange import longrange
    from rnnkit.train.config import TrainConfig
    from rnnkit.train.errors import UserError
    from rnnkit.train.trainer import TrainResult

    monkeypatch.setattr(rnnkit.lessons.longrange, "train", lambda config, **kw: TrainResult(
        config.out, 1, 3, interrupted="SIGINT"))
    with pytest.raises(UserError, match=r"interrupted \(SIGINT\) while training rnn at T=4"):
        longrange(TrainConfig(task="adding", steps=3), [4], ["rnn"], str(tmp_path))


def test_chrono_initialises_the_gated_cells_only(tmp_path):
    js = tmp_path / "c.json"
    r = CliRunner().invoke(main, ["longrange", "--task", "copy", "--lengths", "3",
                                  "--cells", "rnn,lstm", *TINY, "--chrono", "--table",
                                  str(tmp_path / "c.md"), "--json", str(js), "--keep-runs",
                                  str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    rows = json.loads(js.read_text())["rows"]
    assert [(row["cell"], row["chrono"]) for row in rows] == [("rnn", None), ("lstm", 23)]
    saved = json.loads((tmp_path / "runs" / "copy-lstm-T3" / "config.json").read_text())
    assert saved["config"]["chrono"] == 23  # the three delays, ten symbols and ten recalled
    assert "chrono initialisation of the gated cells" in (tmp_path / "c.md").read_text()


def test_solved_at_is_the_first_validation_that_meets_the_threshold(tmp_path):
    from rnnkit.lessons.longrange import Row, markdown, solved_at
    from rnnkit.train import checkpoint as C

    for step, accuracy in [(100, 0.5), (200, 0.991), (300, 0.98), (400, 0.999)]:
        C.append_metrics(str(tmp_path), {"step": step, "split": "valid",
                                         "symbol_accuracy": accuracy})
    C.append_metrics(str(tmp_path), {"step": 50, "split": "train", "symbol_accuracy": 1.0})
    assert solved_at(str(tmp_path), "copy") == 200
    rows = [Row("copy", "gru", 50, "symbol_accuracy", 0.999, 0.125, 1.0, solved_at=200),
            Row("copy", "lstm", 50, "symbol_accuracy", 0.6, 0.125, 1.0)]
    table = markdown(rows, TrainConfig(task="copy", steps=400))
    assert "| solved (symbol_accuracy >= 0.99) at step | GRU 200 |" in table


@pytest.mark.skipif(hasattr(__import__("rnnkit"), "LayerNormLSTM"),
                    reason="rnnkit.LayerNormLSTM exists")
def test_a_missing_layernorm_cell_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["longrange", "--lengths", "4", "--cells", "layernorm-lstm",
                                  *TINY, "--table", str(tmp_path / "t.md"), "--json",
                                  str(tmp_path / "t.json")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "rnnkit.LayerNormLSTM does not exist in this install" in r.output


@pytest.mark.parametrize("flag, steps_run", [("--until-solved", 2), ("--full-budget", 6)])
def test_until_solved_stops_each_run_at_its_first_solving_validation(monkeypatch, tmp_path, flag,
                                                                       steps_run):
    """With the copy threshold lowered to 0 every validation solves the task: --until-solved
    ends each run at its first validation (step 2 of 6), its row holding that validation;
    --full-budget trains on to the end."""
    import rnnkit.lessons.longrange as LR

    monkeypatch.setitem(LR.SOLVED, "copy", ("symbol_accuracy", 0.0))
    js = tmp_path / "u.json"
    r = CliRunner().invoke(main, ["longrange", "--task", "copy", "--lengths", "3,4",
                                  "--cells", "gru", "--hidden-size", "6", "--steps", "6",
                                  "--batch-size", "8", "--threads", "1", "--eval-every", "2",
                                  flag, "--table", str(tmp_path / "u.md"), "--json", str(js),
                                  "--keep-runs", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    rows = json.loads(js.read_text())["rows"]
    assert [row["solved_at"] for row in rows] == [2, 2]
    assert [row["steps"] for row in rows] == [steps_run, steps_run]
    stopped = "each run stopped at the first validation that solved the task"
    assert (stopped in (tmp_path / "u.md").read_text()) == (flag == "--until-solved")
    for T in (3, 4):
        steps = [m["step"] for m in map(json.loads, (tmp_path / "runs" / f"copy-gru-T{T}" /
                                                     "metrics.jsonl").read_text().splitlines())
                 if m.get("split") == "valid"]
        assert max(steps) == steps_run


def test_the_copy_budget_trains_unclipped_and_the_adding_one_clipped(tmp_path):
    for task, clip in (("copy", 0.0), ("adding", 1.0)):
        r = CliRunner().invoke(main, ["longrange", "--task", task, "--lengths", "3",
                                      "--cells", "gru", *TINY, "--table", str(tmp_path / "g.md"),
                                      "--json", str(tmp_path / "g.json"), "--keep-runs",
                                      str(tmp_path / task)])
        assert r.exit_code == 0, r.output
        saved = json.loads((tmp_path / task / f"{task}-gru-T3" / "config.json").read_text())
        assert saved["config"]["grad_clip"] == clip
        footer = "no gradient clipping" if clip == 0 else "gradient norm clipped at 1"
        assert footer in (tmp_path / "g.md").read_text()
