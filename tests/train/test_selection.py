"""The best checkpoint is chosen by the task's own metric (config.SELECTION) or --select-by."""

from __future__ import annotations

import json

import pytest

from rnnkit.train import checkpoint as C
from rnnkit.train.config import SELECTION, TrainConfig
from rnnkit.train.errors import UserError
from rnnkit.train.selection import Selection
from rnnkit.train.trainer import train

# A run whose validation loss is lowest early while accuracy keeps rising (the user's report:
# lowest loss at step 250 with 68.6% accuracy, 76.2% at the end).
SCRIPT = [(250, 0.61, 0.686), (500, 0.64, 0.731), (750, 0.70, 0.752), (1000, 0.73, 0.762)]


def _pick(selection: Selection, script) -> int:
    best: dict = {}
    for step, loss, accuracy in script:
        metrics = {"loss": loss, "accuracy": accuracy, "macro_f1": accuracy - 0.01}
        if selection.improves(metrics, best):
            best = {**metrics, "step": step}
    return best["step"]


def test_selection_follows_the_task_metric_and_its_direction():
    assert Selection.of("classify", None) == Selection("accuracy", "max")
    assert _pick(Selection.of("classify", None), SCRIPT) == 1000
    assert _pick(Selection.of("tag", "macro_f1"), SCRIPT) == 1000
    assert _pick(Selection.of("classify", "loss"), SCRIPT) == 250
    assert Selection.of("charlm", None) == Selection("loss", "min")
    assert Selection.of("seq2seq", None) == Selection("exact_match", "max")
    # ties keep the earlier checkpoint
    flat = [(s, 0.5, 0.7) for s in (10, 20, 30)]
    assert _pick(Selection.of("classify", None), flat) == 10


@pytest.mark.parametrize("task,bad", [("classify", "bpc"), ("charlm", "accuracy"),
                                      ("copy", "Loss")])
def test_unknown_select_by_is_refused_with_the_metrics_the_task_reports(task, bad):
    listed = ", ".join(SELECTION[task])
    with pytest.raises(UserError, match=f"--select-by: task {task} reports {listed}; got"):
        TrainConfig(task=task, select_by=bad).resolved()
    saved = TrainConfig(task=task).to_json()
    saved["select_by"] = bad
    with pytest.raises(UserError, match="field 'select_by': expected one of"):
        TrainConfig.from_json(saved, "x/config.json")


def _scripted(monkeypatch, task_class):
    """task_class.evaluate returns SCRIPT's metrics, one validation after another."""
    calls = iter(SCRIPT)

    def evaluate(self, model, device, data=None):
        _, loss, accuracy = next(calls)
        return {"loss": loss, "accuracy": accuracy, "macro_f1": accuracy, "examples": 10}

    monkeypatch.setattr(task_class, "evaluate", evaluate)


def _reviews(tmp_path):
    lines = ["text,label"] + [f"w{i % 7} w{i % 3} {'good' if i % 2 else 'bad'},{i % 2}"
                              for i in range(60)]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _tiny(tmp_path, out, **kw):
    return TrainConfig(task="classify", data=_reviews(tmp_path), hidden_size=8, embed_size=4,
                       batch_size=8, steps=8, eval_every=2, threads=1, out=str(out),
                       warmup_steps=1, **kw)


@pytest.mark.parametrize("select_by,step", [(None, 8), ("loss", 2)])
def test_a_run_keeps_the_checkpoint_its_metric_chooses(tmp_path, monkeypatch, select_by, step):
    from rnnkit.train.tasks import Classify

    _scripted(monkeypatch, Classify)
    out = tmp_path / "run"
    result = train(_tiny(tmp_path, out, select_by=select_by), progress=False, echo=lambda s: None)
    metric = select_by or "accuracy"
    assert result.best["step"] == step and result.best["select_by"] == metric
    _, meta = C.load_weights(str(out), "best")
    assert meta["step"] == step and meta["select_by"] == metric
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["select_by"] == metric
    valid = [r for r in C.read_metrics(str(out)) if r["split"] == "valid"]
    assert [r["step"] for r in valid if r["best"]] == ([2, 4, 6, 8] if select_by is None else [2])
    # resume continues with the saved choice: a later validation is still judged by it
    assert C.load_last(str(out))["meta"]["best"]["select_by"] == metric


def test_resume_uses_the_saved_select_by(tmp_path, monkeypatch):
    from rnnkit.train.tasks import Classify

    _scripted(monkeypatch, Classify)
    out = tmp_path / "run"
    cut = train(_tiny(tmp_path, out, select_by="loss"), progress=False, echo=lambda s: None,
                should_stop=lambda step: step == 4)
    assert cut.interrupted and cut.best["step"] == 2
    from rnnkit.train.runs import resume_config

    config = resume_config(str(out), {})
    assert config.select_by == "loss"
    resumed = train(config, resume=True, progress=False, echo=lambda s: None)
    assert resumed.best["step"] == 2  # by accuracy it would have been the last
    with pytest.raises(UserError, match="--select-by accuracy"):
        resume_config(str(out), {"select_by": "accuracy"})
