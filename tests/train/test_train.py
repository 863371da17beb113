"""rnnkit.train / tasks / checkpoint: schedule, exact resume, checkpoints, every task learns."""

import json
import os

import pytest
import torch

from rnnkit.train import checkpoint as C
from rnnkit.train.errors import UserError
from rnnkit.train.config import TrainConfig
from rnnkit.train.runs import evaluate_run, generate, load_run
from rnnkit.train.trainer import learning_rate, train

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
        "JULIET:\nAy me! O Romeo, Romeo, wherefore art thou Romeo?\n\n") * 40


def quiet(*_):
    pass


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def tiny(corpus, out, **kw):
    base = dict(data=corpus, hidden_size=24, embed_size=8, batch_size=4, seq_len=16, steps=12,
                eval_every=4, log_every=1, threads=1, out=str(out), warmup_steps=3)
    base.update(kw)
    return TrainConfig(**base)


def test_learning_rate_schedule():
    c = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(c, s, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine: never rises
    assert lrs[55] == pytest.approx(0.55)  # halfway through the decay
    assert lrs[100] == pytest.approx(0.1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_interrupted_and_resumed_equals_uninterrupted(corpus, tmp_path, cell):
    """Dropout (RNG), carried hidden state, AdamW moments and the schedule all resume exactly."""
    kw = dict(cell=cell, num_layers=2, dropout=0.2)
    whole = train(tiny(corpus, tmp_path / "whole", **kw), progress=False, echo=quiet)
    assert whole.interrupted is None and whole.step == 12
    cut = train(tiny(corpus, tmp_path / "cut", **kw), progress=False, echo=quiet,
                should_stop=lambda step: step == 6)
    assert cut.interrupted == "stopped" and cut.step == 6
    assert C.load_last(str(tmp_path / "cut"))["meta"]["step"] == 6
    resumed = train(tiny(corpus, tmp_path / "cut", **kw), resume=True, progress=False,
                    echo=quiet)
    assert resumed.step == 12
    a = C.load_last(str(tmp_path / "whole"))
    b = C.load_last(str(tmp_path / "cut"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizer"]["state"][0].items():
        assert torch.equal(value, b["optimizer"]["state"][0][key])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    strip = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")}
             for r in C.read_metrics(str(tmp_path / "whole"))]
    again = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")}
             for r in C.read_metrics(str(tmp_path / "cut"))]
    assert strip == again  # no record lost or doubled across the interruption


def lrs(run_dir):
    return [r["lr"] for r in C.read_metrics(str(run_dir)) if r["split"] == "train"]


def test_resume_keeps_the_learning_rate_schedule(corpus, tmp_path):
    """The cosine decay ends where the run was first planned to end: resuming with the same
    --steps gives the same learning rate at every step, a larger --steps runs on at the floor."""
    from rnnkit.train.runs import resume_config

    kw = dict(lr=1e-2, min_lr_ratio=0.1)
    train(tiny(corpus, tmp_path / "whole", **kw), progress=False, echo=quiet)
    whole = lrs(tmp_path / "whole")
    assert len(whole) == 12 and whole[2] == 1e-2 and whole[3] > whole[-1] > 1e-3  # a decay
    for name in ("same", "longer"):
        train(tiny(corpus, tmp_path / name, **kw), progress=False, echo=quiet,
              should_stop=lambda step: step == 6)
    said = []
    train(resume_config(str(tmp_path / "same"), {"steps": 12}), resume=True, progress=False,
          echo=said.append)
    assert lrs(tmp_path / "same") == whole  # exactly, step by step
    assert not any("note" in s for s in said)
    said = []
    train(resume_config(str(tmp_path / "longer"), {"steps": 16}), resume=True, progress=False,
          echo=said.append)
    longer = lrs(tmp_path / "longer")
    assert longer[:12] == whole  # the first 12 steps as planned ...
    assert longer[12:] == [pytest.approx(1e-3, rel=1e-12)] * 4  # ... then the floor
    assert any("schedule ends at step 12" in s and "steps 13-16 run at its floor" in s
               for s in said), said
    meta = C.load_last(str(tmp_path / "longer"))["meta"]
    assert meta["horizon"] == 12 and meta["total_steps"] == 16


def test_resume_with_epochs_replaces_saved_steps(corpus, tmp_path):
    from rnnkit.train.runs import resume_config

    train(tiny(corpus, tmp_path / "run", steps=2), progress=False, echo=quiet)
    config = resume_config(str(tmp_path / "run"), {"epochs": 3.0})
    assert config.steps is None and config.epochs == 3.0
    assert resume_config(str(tmp_path / "run"), {"epochs": 3.0, "steps": 5}).steps == 5


def test_config_from_json_types_and_bounds():
    from rnnkit.train.config import TrainConfig as T

    saved = T(task="tag", seq_len=0).to_json()  # a tag run saves seq_len 0 (unused)
    saved.update(lr=1, betas=[0.5, 0.9], threads=None, dropout=0)  # int for float, list: fine
    config = T.from_json(saved, "x/config.json")
    assert config.lr == 1 and config.betas == (0.5, 0.9) and config.seq_len == 0
    for field, value in [("seq_len", 0), ("lr", float("nan")), ("lr", 0), ("betas", [0.9, 1]),
                         ("tokens", "bytes"), ("epochs", "2"), ("seed", 1.0), ("num_layers", True)]:
        bad = dict(saved, task="charlm") if field == "seq_len" else dict(saved)
        bad[field] = value
        with pytest.raises(UserError, match=rf"^x/config.json: field '{field}': expected .*, got "):
            T.from_json(bad, "x/config.json")


def test_config_choices_are_those_of_the_code():
    from rnnkit.cells import CELLS
    from rnnkit.train import models, registry
    from rnnkit.train.config import CHOICES, TASKS

    assert CHOICES["task"] == tuple(TASKS) == tuple(registry.TASK_CLASSES)
    assert CHOICES["cell"][:len(CELLS)] == CELLS and CHOICES["impl"] == tuple(models.LAYERS)
    assert set(CHOICES["cell"]) == set(models.LAYER_CLASSES)


def test_checkpoint_loads_into_every_impl(corpus, tmp_path):
    train(tiny(corpus, tmp_path / "run", steps=4), progress=False, echo=quiet)
    losses = {impl: evaluate_run(str(tmp_path / "run"), impl=impl, device="cpu")["loss"]
              for impl in ("rnnkit", "torch", "reference")}
    assert losses["torch"] == pytest.approx(losses["rnnkit"], rel=1e-5)
    assert losses["reference"] == pytest.approx(losses["rnnkit"], rel=1e-5)
    _, _, model, _ = load_run(str(tmp_path / "run"), impl="torch")
    assert type(model.rnn) is torch.nn.LSTM


def test_run_folder_contents_and_best(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, out), progress=False, echo=quiet)
    assert sorted(os.listdir(out)) == ["best.safetensors", "config.json", "last.safetensors",
                                       "metrics.jsonl", "vocab.json"]
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["hidden_size"] == 24 and config["seq_len"] == 16
    records = C.read_metrics(str(out))
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [4, 8, 12]
    best_step = min(valid, key=lambda r: r["loss"])["step"]
    weights, meta = C.load_weights(str(out), "best")
    assert meta["step"] == best_step
    assert evaluate_run(str(out), device="cpu")["loss"] == pytest.approx(
        min(r["loss"] for r in valid), rel=1e-6)


def test_charlm_eval_covers_every_character(corpus, tmp_path):
    train(tiny(corpus, tmp_path / "run", steps=2), progress=False, echo=quiet)
    metrics = evaluate_run(str(tmp_path / "run"), device="cpu")
    n = len(TEXT)
    assert metrics["characters"] == n - round(n * 0.9) - 1
    assert metrics["bpc"] == pytest.approx(metrics["loss"] / 0.6931471805599453)
    other = tmp_path / "other.txt"
    other.write_text("ROMEO: O light!\n" * 20)
    assert evaluate_run(str(tmp_path / "run"), data=str(other), device="cpu")["characters"] == \
        len("ROMEO: O light!\n" * 20) - 1


def test_generate_is_seeded_and_checks_prompt(corpus, tmp_path):
    train(tiny(corpus, tmp_path / "run", steps=2), progress=False, echo=quiet)
    a = "".join(generate(str(tmp_path / "run"), "RO", 40, seed=3, device="cpu"))
    b = "".join(generate(str(tmp_path / "run"), "RO", 40, seed=3, device="cpu", impl="torch"))
    assert len(a) == 40 and a == b and set(a) <= set(TEXT)
    with pytest.raises(UserError, match="'@'"):
        list(generate(str(tmp_path / "run"), "R@", 5, device="cpu"))


def test_resume_rejects_contradicting_options(corpus, tmp_path):
    from rnnkit.train.runs import resume_config

    train(tiny(corpus, tmp_path / "run", steps=2), progress=False, echo=quiet)
    with pytest.raises(UserError) as e:
        resume_config(str(tmp_path / "run"), {"hidden_size": 32, "cell": "gru", "steps": 40})
    assert "--hidden-size 32 (saved: 24)" in str(e.value) and "--cell gru" in str(e.value)
    assert "steps" not in str(e.value)
    assert resume_config(str(tmp_path / "run"), {"steps": 40}).steps == 40


def test_corrupt_checkpoint_is_a_user_error(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, out, steps=2), progress=False, echo=quiet)
    raw = (out / "best.safetensors").read_bytes()
    (out / "best.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        evaluate_run(str(out), device="cpu")
    (out / "best.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="corrupt or truncated"):
        evaluate_run(str(out), device="cpu")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    C.write_json(str(path), {"v": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(UserError, match="f.json: cannot write .disk full.; the previous file is "
                                        "intact"):
        C.write_json(str(path), {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["f.json"]  # no temporary file left behind


def test_optimizer_state_roundtrip_without_pickle():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = C.flatten_optimizer(opt.state_dict())
    meta = json.loads(json.dumps(meta))  # what the metadata goes through
    other = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    other.load_state_dict(C.unflatten_optimizer(tensors, meta))
    group = other.param_groups[0]
    assert group["lr"] == 0.1 and tuple(group["betas"]) == (0.8, 0.9)
    assert torch.equal(other.state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])


# ---- every task trains, evaluates and learns something --------------------------------------
def test_classify_learns(tmp_path):
    import random

    rng = random.Random(0)
    words = ["film", "plot", "actor", "scene", "music", "story", "the", "a", "was", "very"]
    lines = ["text,label"]
    for i in range(240):
        label = i % 2
        body = rng.sample(words, 4) + [("great" if label else "awful")] + rng.sample(words, 3)
        lines.append(" ".join(body) + "," + ("pos" if label else "neg"))
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    res = train(TrainConfig(task="classify", data=str(path), hidden_size=16, embed_size=8,
                            batch_size=16, steps=60, eval_every=60, lr=1e-2, threads=1,
                            out=str(out)), progress=False, echo=quiet)
    assert res.valid["accuracy"] >= 0.9 and res.valid["macro_f1"] >= 0.9
    again = evaluate_run(str(out), device="cpu", impl="reference")
    assert again["accuracy"] == pytest.approx(res.valid["accuracy"])


def test_tag_learns(tmp_path):
    import random

    rng = random.Random(1)
    names, verbs = ["Ann", "Bob", "Cy", "Di"], ["sees", "likes", "meets", "calls"]
    sents = []
    for _ in range(150):
        sent = [(rng.choice(names), "B-PER"), (rng.choice(verbs), "O"),
                (rng.choice(names), "B-PER"), (".", "O")]
        sents.append("\n".join(f"{w} {t}" for w, t in sent))
    path = tmp_path / "ner.conll"
    path.write_text("\n\n".join(sents) + "\n")
    res = train(TrainConfig(task="tag", data=str(path), hidden_size=16, embed_size=8,
                            batch_size=16, steps=40, eval_every=40, lr=1e-2, threads=1,
                            out=str(tmp_path / "run")), progress=False, echo=quiet)
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["bidirectional"] is True
    assert res.valid["accuracy"] >= 0.95 and res.valid["macro_f1"] >= 0.95


def test_adding_beats_baseline(tmp_path):
    res = train(TrainConfig(task="adding", seq_len=10, cell="gru", hidden_size=32, batch_size=32,
                            steps=250, eval_every=250, lr=1e-2, threads=1,
                            out=str(tmp_path / "run")),
                progress=False, echo=quiet)
    assert res.valid["mse"] < 0.5 * res.valid["baseline_mse"]


def test_copy_runs_and_reports_baseline(tmp_path):
    res = train(TrainConfig(task="copy", seq_len=5, hidden_size=16, embed_size=8, batch_size=8,
                            steps=5, eval_every=5, threads=1, cell="gru",
                            out=str(tmp_path / "run")), progress=False, echo=quiet)
    assert 0.0 <= res.valid["symbol_accuracy"] <= 1.0
    assert res.valid["baseline_loss"] == pytest.approx(10 * 2.0794415 / 25, rel=1e-6)


@pytest.mark.parametrize("task, name", [("adding", "Adding"), ("copy", "Copy")])
def test_synthetic_batches_depend_only_on_seed_and_step(task, name):
    from rnnkit.train import registry

    c = TrainConfig(task=task, seq_len=12, batch_size=4).resolved()
    a, b = registry.build_task(c), registry.build_task(c)
    assert type(a).__name__ == name
    assert torch.equal(a.batch(7).x, b.batch(7).x) and not torch.equal(a.batch(7).x, a.batch(8).x)
    if task == "adding":
        batch = a.batch(0)
        assert torch.all(batch.x[..., 1].sum(0) == 2)  # exactly two markers per sequence
        assert torch.allclose((batch.x[..., 0] * batch.x[..., 1]).sum(0), batch.y)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_stop_signals_become_a_flag(signum):
    import signal

    from rnnkit.train.distributed import StopSignals

    sig = getattr(signal, signum)
    before = signal.getsignal(sig)
    with StopSignals() as stop:
        os.kill(os.getpid(), sig)
        assert stop.signal == sig  # recorded, not raised: the step in progress finishes
    assert signal.getsignal(sig) == before  # handlers restored afterwards
