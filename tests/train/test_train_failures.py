"""Training under failure: a non-finite loss, and kill -9 while checkpoints are being written."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from rnnkit.train import checkpoint as C
from rnnkit.train.errors import UserError
from rnnkit.train.tasks import CharLM
from rnnkit.train.config import TrainConfig
from rnnkit.train.runs import load_run
from rnnkit.train.trainer import train

TEXT = ("KING:\nWhat say you, lords? Speak, and speak plainly now.\n\n") * 60


def _config(corpus, out, **kw):
    base = dict(data=corpus, hidden_size=24, embed_size=8, batch_size=4, seq_len=16, steps=12,
                eval_every=4, log_every=1, threads=1, out=str(out), warmup_steps=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_checkpoint(corpus, tmp_path,
                                                                              monkeypatch):
    out = tmp_path / "run"
    original = CharLM.loss
    calls = {"n": 0}

    def poisoned(self, net, batch, carry):
        loss, state = original(self, net, batch, carry)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 7 else loss), state

    monkeypatch.setattr(CharLM, "loss", poisoned)
    with pytest.raises(UserError, match=r"training diverged at step 7 \(loss nan\).*last "
                                        r"checkpoint .* is intact"):
        train(_config(corpus, out), progress=False, echo=lambda *_: None)
    saved = C.load_last(str(out))
    assert saved["meta"]["step"] == 4  # the evaluation before the bad step
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    load_run(str(out))  # the run still loads


CHILD = """
import sys
from rnnkit.train.config import TrainConfig
from rnnkit.train.trainer import train
config = TrainConfig(data=sys.argv[1], out=sys.argv[2], hidden_size=32, embed_size=8,
                     batch_size=4, seq_len=16, steps=100000, eval_every=1, log_every=1,
                     threads=1, warmup_steps=1)
train(config, resume=sys.argv[3] == "resume", progress=False, echo=lambda *a: None)
"""


def test_kill_9_during_checkpoint_writes_never_leaves_a_broken_run(corpus, tmp_path):
    """A training process that writes a checkpoint every step is killed with SIGKILL at random
    moments, again and again; after every kill the run folder loads and resumes."""
    out = str(tmp_path / "run")
    rng = random.Random(0)
    survived = 0
    trials = 25
    for trial in range(trials):
        mode = "resume" if os.path.exists(os.path.join(out, "last.safetensors")) else "new"
        child = subprocess.Popen([sys.executable, "-c", CHILD, corpus, out, mode],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait until the child is writing checkpoints, then kill it at a random moment
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(out, "last.safetensors")) and time.time() < deadline:
            if child.poll() is not None:
                pytest.fail(f"trainer exited early: {child.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        load_run(out, which="last")  # raises if anything is broken
        load_run(out, which="best")
        assert C.load_last(out)["meta"]["step"] >= 1
        survived += 1
    assert survived == trials
