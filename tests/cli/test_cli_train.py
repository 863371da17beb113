"""rnnkit train / eval / generate / plot from the command line: exit codes, what the user sees."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from rnnkit.cli import main

from ..helpers import one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = ("KING:\nWhat say you, my lord? Speak, and be brief.\n\n"
        "LORD:\nMy liege, the night is cold and full of fear.\n\n") * 30
TINY = ["--hidden-size", "16", "--embed-size", "8", "--batch-size", "4", "--seq-len", "16",
        "--threads", "1", "-q"]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


@pytest.fixture
def run_dir(corpus, tmp_path):
    out = str(tmp_path / "run")
    r = CliRunner().invoke(main, ["train", "--data", corpus, "--steps", "6", "--eval-every", "3",
                                  "--out", out, *TINY])
    assert r.exit_code == 0, r.output
    return out


def digest(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_help_does_not_import_torch():
    code = ("import sys; from rnnkit.cli import main; "
            "sys.argv=['rnnkit','train','--help']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--hidden-size" in r.stdout and re.search(r"default:\s+384\b", r.stdout)


def test_train_eval_generate(run_dir):
    runner = CliRunner()
    r = runner.invoke(main, ["eval", run_dir])
    assert r.exit_code == 0, r.output
    fields = dict(line.split()[:2] for line in r.output.splitlines())
    assert fields["task"] == "charlm" and float(fields["perplexity"]) > 1
    assert float(fields["bpc"]) == pytest.approx(float(fields["loss"]) / 0.693147, rel=1e-3)
    r = runner.invoke(main, ["eval", run_dir, "--impl", "torch", "--json"])
    assert r.exit_code == 0 and '"loss"' in r.output
    a = runner.invoke(main, ["generate", run_dir, "--prompt", "KING:", "--length", "30",
                             "--seed", "5", "--top-k", "5"])
    b = runner.invoke(main, ["generate", run_dir, "--prompt", "KING:", "--length", "30",
                             "--seed", "5", "--top-k", "5", "--impl", "reference"])
    assert a.exit_code == 0 and a.output == b.output
    assert a.output.startswith("KING:") and len(a.output) == len("KING:") + 30 + 1


@pytest.mark.parametrize("args, message", [
    (["generate", "{run}", "--prompt", "\u00e9"], "not in the run's vocabulary"),
    (["train", "--resume", "{run}", "--hidden-size", "32", "--cell", "gru"],
     "--hidden-size 32 (saved: 16); --cell gru (saved: lstm)"),
    (["train", "--out", "{run}", "--steps", "2", *TINY], "already holds a run"),
    (["train", "--resume", "{run}", "--steps", "4"], "already at step 6; 4 steps would end"),
])
def test_errors_leave_run_untouched(run_dir, args, message):
    before = digest(run_dir)
    r = CliRunner().invoke(main, [a.replace("{run}", run_dir) for a in args])
    assert message in one_line_error(r)
    assert digest(run_dir) == before


def test_resume_extends_a_finished_run(run_dir):
    r = CliRunner().invoke(main, ["train", "--resume", run_dir, "--steps", "9", "-q"])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "done: 9 steps" in r.output


def test_corrupt_checkpoint(run_dir):
    path = os.path.join(run_dir, "best.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
    r = CliRunner().invoke(main, ["eval", run_dir])
    assert "corrupt or truncated checkpoint" in one_line_error(r)
    os.remove(os.path.join(run_dir, "config.json"))
    r = CliRunner().invoke(main, ["eval", run_dir])
    assert "config.json: no such file" in one_line_error(r)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize("name, content, extra, message", [
    ("empty.txt", b"", [], "the file is empty"),
    ("bad.txt", b"hello\nw\xf6rld\n", [], "not UTF-8 text: byte 0xf6 at line 2, column 2"),
    ("short.txt", b"abcdefghij" * 5, ["--seq-len", "100"], "--seq-len 100 is longer than"),
    ("d.csv", "review,stars\ngood,5\nbad,1\n", ["--task", "classify"],
     "no column 'text', 'label'; the columns are: 'review', 'stars'"),
    ("one.csv", "text,label\ngood,pos\nfine,pos\nok,pos\n", ["--task", "classify"],
     "only one label class ('pos')"),
    ("one.conll", "a O\nb O\n\nc O\n", ["--task", "tag"], "only one tag ('O')"),
    ("bad.conll", "a O\nlonely\n", ["--task", "tag"], "line 2: expected a token and a tag"),
])
def test_bad_data_one_line_error(tmp_path, name, content, extra, message):
    path = write(tmp_path, name, content)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", path, "--steps", "2", "--out", str(out),
                                  *TINY, *extra])
    line = one_line_error(r)
    assert message in line, line
    assert not (out / "last.safetensors").exists()


@pytest.mark.parametrize("args", [
    ["train", "--data", "/no/such/file.txt"],
    ["train", "--cell", "transformer"],
    ["train", "--steps", "0"],
    ["train", "--steps", "5", "--epochs", "1"],
    ["eval", "/no/such/run"],
])
def test_bad_options_exit_2(args):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Error:" in r.output


def test_eval_data_file_and_needs_charlm_for_generate(tmp_path, run_dir):
    text = "KING:\nSpeak, lord.\n" * 10
    other = write(tmp_path, "other.txt", text + "\u00e9!")
    r = CliRunner().invoke(main, ["eval", run_dir, "--data", other, "--json"])
    assert r.exit_code == 0 and f'"characters": {len(text) - 1}' in r.output
    assert '"skipped_characters": 2' in r.output  # not in the run's vocabulary
    out = str(tmp_path / "adding")
    r = CliRunner().invoke(main, ["train", "--task", "adding", "--seq-len", "6", "--steps", "2",
                                  "--out", out, *TINY[:-3]])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", out])
    assert r.exit_code == 0 and "baseline_mse" in r.output
    assert "needs a charlm run" in one_line_error(CliRunner().invoke(main, ["generate", out]))


def test_plot(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    png = str(tmp_path / "c.png")
    r = CliRunner().invoke(main, ["plot", run_dir, run_dir, "--out", png])
    assert r.exit_code == 0, r.output
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    line = one_line_error(CliRunner().invoke(main, ["plot", run_dir]))
    assert "pip install matplotlib" in line


def test_sigterm_saves_and_resumes(corpus, tmp_path):
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "rnnkit", "train", "--data", corpus, "--steps", "100000",
           "--eval-every", "100000", "--log-every", "1", "--out", out, *TINY]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(metrics)
                                          and os.path.getsize(metrics) > 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"resume with: rnnkit train --resume {out}" in stderr
    from rnnkit.train import checkpoint as C

    saved = C.load_last(out)["meta"]["step"]
    assert saved >= 1 and f"at step {saved}/100000" in stderr
    r = CliRunner().invoke(main, ["train", "--resume", out, "--steps", str(saved + 2), "-q"])
    assert r.exit_code == 0, r.output
    assert f"resuming {out} at step {saved}" in r.output and f"done: {saved + 2} steps" in r.output


# ---- a hand-edited config.json ------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run for the module; tests copy it (training is the slow part)."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "corpus.txt").write_text(TEXT)
    out = str(folder / "run")
    r = CliRunner().invoke(main, ["train", "--data", str(folder / "corpus.txt"), "--steps", "2",
                                  "--eval-every", "2", "--out", out, *TINY])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", "16", "field 'hidden_size': expected an integer >= 1, got \"16\" (a string)"),
    ("hidden_size", 0, "field 'hidden_size': expected an integer >= 1, got 0 (a number)"),
    ("steps", 2.5, "field 'steps': expected an integer >= 1 or null, got 2.5 (a number)"),
    ("cell", "transformer",
     "field 'cell': expected one of \"lstm\", \"gru\", \"rnn\", \"layernorm-lstm\", "
     "\"layernorm-gru\", got \"transformer\" (a string)"),
    ("task", None, "field 'task': expected one of \"charlm\", "),
    ("dropout", 1.5, "field 'dropout': expected a number in [0, 1), got 1.5 (a number)"),
    ("lr", True, "field 'lr': expected a number > 0, got true (true/false)"),
    ("bidirectional", "no", "field 'bidirectional': expected true, false or null, got \"no\""),
    ("betas", [0.9], "field 'betas': expected a list of two numbers in [0, 1), got [0.9] (a list)"),
    ("impl", "cudnn", "field 'impl': expected one of \"rnnkit\", \"torch\", \"reference\""),
    ("data", 7, "field 'data': expected a string or null, got 7 (a number)"),
])
@pytest.mark.parametrize("command", ["resume", "eval", "generate"])
def test_hand_edited_config_is_checked(trained, tmp_path, field, value, message, command):
    import json
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(trained, run)
    path = os.path.join(run, "config.json")
    with open(path) as f:
        saved = json.load(f)
    saved["config"][field] = value
    with open(path, "w") as f:
        json.dump(saved, f)
    before = digest(run)
    args = {"resume": ["train", "--resume", run, "--steps", "4", "-q"], "eval": ["eval", run],
            "generate": ["generate", run, "--length", "3"]}[command]
    line = one_line_error(CliRunner().invoke(main, args))
    assert line.startswith(f"Error: {path}: ") and message in line, line
    assert digest(run) == before


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "expected an object with a \"config\" entry, got list"),
    ('{"config": [1]}', "expected an object of settings, got [1] (a list)"),
    ('{"settings": {}}', "expected an object with a \"config\" entry, got dict with keys "
                         "settings"),
])
def test_config_json_of_the_wrong_shape(trained, tmp_path, content, message):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(trained, run)
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write(content)
    before = digest(run)
    for args in (["eval", run], ["train", "--resume", run, "-q"]):
        assert message in one_line_error(CliRunner().invoke(main, args))
    assert digest(run) == before
