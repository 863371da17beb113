"""rnnkit export and rnnkit generate --onnx: a trained run's model in onnxruntime (and as a
torch.export .pt2) gives rnnkit's results.

- charlm: a run of the default model (LSTM, 384 hidden units, six steps), exported as the step
  model and stepped through 1,000 characters (three streams at once) in onnxruntime, matches the
  rnnkit model's logits over the whole sequence to 1e-4; ``generate --onnx`` prints the text that
  ``generate`` prints for the same seed (also for 2-layer GRU and RNN runs, whose state is h
  alone); the .pt2 steps the same.
- classify (GRU, 2 layers), tag (bidirectional LSTM), adding (LSTM over features) and copy
  (tanh RNN): the whole model, on a batch of another size than the export's, with unsorted
  lengths and a padding row past the longest sequence, matches the model's own forward.
- Bad input: one line and Click's exit code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.train.config import TrainConfig
from rnnkit.train.data import read_text
from rnnkit.train.runs import load_run
from rnnkit.train.trainer import train

from ..helpers import one_line_error

NEEDS = 'needs the export extra: pip install "rnnkit[export]"'
ort = pytest.importorskip("onnxruntime", reason=NEEDS)
pytest.importorskip("onnxscript", reason=NEEDS)

STEPS = 1000  # characters stepped through onnxruntime
STREAMS = 3  # sampled side by side: a batch other than the export's example (2)


def quiet(*_):
    pass


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def export(run_dir: str, out: str, fmt: str = "onnx") -> str:
    r = invoke("export", run_dir, "--format", fmt, "--out", out)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"wrote {out}"
    return out


def session(path: str):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


# ---- charlm ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def charlm(tmp_path_factory):
    """A run of the default charlm model (bundled corpus, LSTM 384), with its ONNX step model.
    Six steps at a high learning rate: logits of a few units (up to about 6), as a trained
    model's are, rather than the near-zero logits of fresh weights."""
    folder = tmp_path_factory.mktemp("charlm")
    run_dir = str(folder / "run")
    train(TrainConfig(steps=6, warmup_steps=1, lr=0.03, eval_every=6, threads=1, out=run_dir),
          progress=False, echo=quiet)
    return run_dir, export(run_dir, str(folder / "step.onnx"))


def test_the_step_model_matches_rnnkit_over_1000_characters(charlm):
    run_dir, path = charlm
    config, task, model, _ = load_run(run_dir, "rnnkit", device="cpu")
    assert (config.cell, config.hidden_size) == ("lstm", 384)
    text = read_text(None)[:STEPS * STREAMS]
    ids = torch.tensor(task.vocab.encode(text)).view(STREAMS, STEPS).t().contiguous()  # (T, N)
    with torch.no_grad():
        want, (h_n, c_n) = model(ids)  # (T, N, V): the whole sequence in one call
    s = session(path)
    assert [i.name for i in s.get_inputs()] == ["tokens", "h", "c"]
    h = c = np.zeros((1, STREAMS, 384), np.float32)
    worst = 0.0
    for t in range(STEPS):
        logits, h, c = s.run(None, {"tokens": ids[t].numpy(), "h": h, "c": c})
        worst = max(worst, float(np.abs(logits - want[t].numpy()).max()))
    assert worst <= 1e-4, f"onnxruntime's logits differ from rnnkit's by {worst}"
    assert want.abs().max() > 2  # logits large enough that 1e-4 is a demanding bound
    np.testing.assert_allclose(h, h_n.numpy(), atol=1e-4)
    np.testing.assert_allclose(c, c_n.numpy(), atol=1e-4)


@pytest.mark.parametrize("options", [["--prompt", "ROMEO:", "--length", "300"],
                                     ["--length", "200", "--top-k", "5", "--temperature", "1.5"]])
def test_generate_through_onnx_prints_the_same_text(charlm, options):
    run_dir, path = charlm
    plain = invoke("generate", run_dir, *options, "--seed", "7")
    through = invoke("generate", run_dir, *options, "--seed", "7", "--onnx", path)
    assert plain.exit_code == 0 and through.exit_code == 0, plain.output + through.output
    assert through.output == plain.output
    other = invoke("generate", run_dir, *options, "--seed", "8", "--onnx", path)
    assert other.output != plain.output  # the seed decides, so equal text means equal steps


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_generate_through_onnx_with_one_state(cell, tmp_path):
    """GRU and RNN step models carry h alone; two layers."""
    (tmp_path / "corpus.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    run_dir = str(tmp_path / "run")
    train(TrainConfig(data=str(tmp_path / "corpus.txt"), cell=cell, num_layers=2, hidden_size=16,
                      embed_size=8, batch_size=4, seq_len=16, steps=3, eval_every=3, threads=1,
                      out=run_dir), progress=False, echo=quiet)
    path = export(run_dir, str(tmp_path / "step.onnx"))
    assert [i.name for i in session(path).get_inputs()] == ["tokens", "h"]
    plain = invoke("generate", run_dir, "--length", "150", "--seed", "2")
    through = invoke("generate", run_dir, "--length", "150", "--seed", "2", "--onnx", path)
    assert plain.exit_code == 0 and through.output == plain.output, plain.output + through.output


def test_the_pt2_step_model_matches_rnnkit(charlm, tmp_path):
    run_dir, _ = charlm
    path = export(run_dir, str(tmp_path / "step.pt2"), "pt2")
    step = torch.export.load(path).module()
    _, task, model, _ = load_run(run_dir, "rnnkit", device="cpu")
    ids = torch.tensor(task.vocab.encode("KING RICHARD:\nNow is the winter")).view(-1, 1)
    with torch.no_grad():
        want, _ = model(ids.repeat(1, 3))
        h = c = torch.zeros(1, 3, 384)
        for t in range(len(ids)):
            logits, h, c = step(ids[t].repeat(3), h, c)
            torch.testing.assert_close(logits, want[t], atol=1e-5, rtol=1e-5)


# ---- classify, tag, adding, copy ---------------------------------------------------------------
def classify_data(folder) -> dict:
    rng = random.Random(0)
    words = "film plot actor scene music story the a was very great awful".split()
    rows = ["text,label"] + [" ".join(rng.sample(words, rng.randint(1, 9))) + ","
                             + rng.choice(["pos", "neg"]) for _ in range(60)]
    (folder / "reviews.csv").write_text("\n".join(rows) + "\n")
    return dict(data=str(folder / "reviews.csv"), cell="gru", num_layers=2)


def tag_data(folder) -> dict:
    rng = random.Random(1)
    sents = ["\n".join(f"{rng.choice(['Ann', 'Bob', 'sees', 'calls', '.'])} "
                       f"{rng.choice(['B-PER', 'O'])}" for _ in range(rng.randint(1, 7)))
             for _ in range(60)]
    (folder / "ner.conll").write_text("\n\n".join(sents) + "\n")
    return dict(data=str(folder / "ner.conll"), cell="lstm")  # bidirectional: tag's default


TASKS = {"classify": classify_data, "tag": tag_data,
         "adding": lambda folder: dict(seq_len=6, cell="lstm"),
         "copy": lambda folder: dict(seq_len=4, cell="rnn")}


@pytest.fixture(scope="module", params=list(TASKS))
def whole(request, tmp_path_factory):
    """(task, run folder, ONNX file) of a tiny run of each task that exports the whole model."""
    task = request.param
    folder = tmp_path_factory.mktemp(task)
    run_dir = str(folder / "run")
    train(TrainConfig(task=task, hidden_size=8, embed_size=4, batch_size=4, steps=2,
                      eval_every=2, threads=1, out=run_dir, **TASKS[task](folder)),
          progress=False, echo=quiet)
    return task, run_dir, export(run_dir, str(folder / "model.onnx"))


def batch(task: str, model) -> tuple[dict, tuple]:
    """A batch of 4 (the export's example has 2) and length 7: ONNX feeds and the model's
    arguments. Padded tasks: unsorted lengths, the longest 6, so that the last row is padding
    in every sequence."""
    g = torch.Generator().manual_seed(5)
    T, N = 7, 4
    spec = model.spec
    if spec.vocab_size == 0:
        x = torch.rand(T, N, spec.input_features, generator=g)
        return {"features": x.numpy()}, (x,)
    x = torch.randint(0, spec.vocab_size, (T, N), generator=g)
    if spec.pad_index is None:
        return {"tokens": x.numpy()}, (x,)
    lengths = torch.tensor([3, 6, 1, 6])
    for n, length in enumerate(lengths):
        x[length:, n] = spec.pad_index
    return {"tokens": x.numpy(), "lengths": lengths.numpy()}, (x, lengths)


def test_the_whole_model_matches_rnnkit(whole):
    task, run_dir, path = whole
    _, _, model, _ = load_run(run_dir, "rnnkit", device="cpu")
    feeds, args = batch(task, model)
    with torch.no_grad():
        want = model(*args)[0]
    got, = session(path).run(None, feeds)
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_the_pt2_model_matches_rnnkit(whole, tmp_path):
    """The .pt2 runs rnnkit's kernels (on the packed rows the graph makes, for classify and
    tag)."""
    task, run_dir, _ = whole
    program = torch.export.load(export(run_dir, str(tmp_path / "model.pt2"), "pt2"))
    _, _, model, _ = load_run(run_dir, "rnnkit", device="cpu")
    _, args = batch(task, model)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*args), model(*args)[0])


# ---- bad input ---------------------------------------------------------------------------------
@pytest.fixture
def old_run(tmp_path):
    """A copy of the committed charlm run (tests/data/run-2026-11-30)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return shutil.copytree(os.path.join(here, "data", "run-2026-11-30"), tmp_path / "run")


def test_a_folder_that_is_not_a_run(tmp_path):
    line = one_line_error(invoke("export", str(tmp_path)))
    assert "config.json: no such file" in line and "run folder" in line
    (tmp_path / "file").write_text("x")
    r = invoke("export", str(tmp_path / "file"))
    assert r.exit_code == 2 and "is a file" in r.output


def test_a_seq2seq_run_does_not_export(old_run):
    """The task is read before anything else: a config.json that says seq2seq is enough."""
    config = json.loads((old_run / "config.json").read_text())
    config["config"]["task"] = "seq2seq"
    (old_run / "config.json").write_text(json.dumps(config))
    line = one_line_error(invoke("export", str(old_run)))
    assert "seq2seq runs do not export" in line
    assert "charlm, classify, tag, adding, copy" in line


def test_an_unwritable_out_is_one_line(old_run, tmp_path):
    line = one_line_error(invoke("export", str(old_run), "--out",
                                 str(tmp_path / "missing" / "m.onnx")))
    assert "cannot write" in line


def test_generate_refuses_a_file_that_is_not_the_runs_step_model(old_run, charlm, tmp_path):
    r = invoke("generate", str(old_run), "--onnx", str(tmp_path / "absent.onnx"))
    assert r.exit_code == 2 and "does not exist" in r.output
    other = charlm[1]  # the default run's step model: 384 hidden units, not 32
    line = one_line_error(invoke("generate", str(old_run), "--onnx", other))
    assert "not this run's step model" in line and "(1, N, 32)" in line
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    line = one_line_error(invoke("generate", str(old_run), "--onnx", str(tmp_path / "junk.onnx")))
    assert "onnxruntime cannot load it" in line


@pytest.mark.parametrize("missing, command", [("onnxscript", ["export"]),
                                              ("onnxruntime", ["generate", "--onnx"])])
def test_a_missing_export_extra_is_named(old_run, charlm, monkeypatch, missing, command):
    monkeypatch.setitem(sys.modules, missing, None)  # import of it fails
    args = [command[0], str(old_run), *command[1:]] + ([charlm[1]] if len(command) > 1 else [])
    line = one_line_error(invoke(*args))
    assert 'pip install "rnnkit[export]"' in line and missing in line
