"""rnnkit train under torchrun (2 CPU processes, gloo on 127.0.0.1): SIGTERM, the printed resume
command and exact resume; evaluation on rank 0 only; metrics.jsonl written once."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from rnnkit.train import checkpoint as C
from rnnkit.train.config import TrainConfig
from rnnkit.train.runs import evaluate_run
from rnnkit.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = ("KING:\nWhat say you, my lord? Speak, and be brief.\n\n"
        "LORD:\nMy liege, the night is cold and full of fear.\n\n") * 30

# Runs the CLI in each process, counting evaluations per rank in EVALS_DIR/evals.<rank>. With
# STOP > 0, rank 0 sends SIGTERM to torchrun (its parent) when step STOP starts, and every rank
# sleeps before each later step, so that the signal lands well before the run would end.
WRAPPER = """
import os, signal, sys, time
from rnnkit.train import tasks
from rnnkit.cli import main

evals_dir, stop = sys.argv[1], int(sys.argv[2])
rank = os.environ["RANK"]
evaluate, batch = tasks.CharLM.evaluate, tasks.CharLM.batch

def counted(self, *args, **kwargs):
    with open(os.path.join(evals_dir, "evals." + rank), "a") as f:
        f.write("evaluate\\n")
    return evaluate(self, *args, **kwargs)

def slowed(self, step):
    if stop and step >= stop:
        if step == stop and rank == "0":
            os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(0.5)
    return batch(self, step)

tasks.CharLM.evaluate, tasks.CharLM.batch = counted, slowed
main(sys.argv[3:], prog_name="rnnkit")
"""

# charlm (carried hidden state), two layers with dropout (an RNG stream per process), a schedule
# that warms up and decays within the run
OPTIONS = ["--data", "{corpus}", "--steps", "12", "--eval-every", "4", "--log-every", "1",
           "--hidden-size", "16", "--embed-size", "8", "--batch-size", "4", "--seq-len", "16",
           "--num-layers", "2", "--dropout", "0.3", "--warmup-steps", "3", "--threads", "1",
           "--device", "cpu", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port())]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def launch(tmp_path, out: str, stop: int, corpus: str) -> subprocess.CompletedProcess:
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    evals = tmp_path / f"evals-{os.path.basename(out)}"
    evals.mkdir()
    options = [o.replace("{corpus}", corpus) for o in OPTIONS]
    return run(torchrun() + ["--nproc-per-node", "2", str(wrapper), str(evals), str(stop),
                             "train", *options, "--out", out])


def without_timing(run_dir: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")}
            for r in C.read_metrics(run_dir)]


def test_torchrun_sigterm_resume_is_exact_and_only_rank_0_evaluates(tmp_path,
                                                                     one_intra_op_thread):
    corpus = str(tmp_path / "corpus.txt")
    (tmp_path / "corpus.txt").write_text(TEXT)
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")

    # uninterrupted: 12 steps, validation at 4, 8, 12 by rank 0 alone
    r = launch(tmp_path, whole, 0, corpus)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: 12 steps") == 1  # only rank 0 reports
    assert (tmp_path / "evals-whole" / "evals.0").read_text().count("evaluate") == 3
    assert not (tmp_path / "evals-whole" / "evals.1").exists()  # rank 1 never evaluates
    records = C.read_metrics(whole)  # written by rank 0 alone: nothing doubled
    assert [x["step"] for x in records if x["split"] == "valid"] == [4, 8, 12]
    assert [x["step"] for x in records if x["split"] == "train"] == list(range(1, 13))
    # rank 0's metrics are those of a single-process evaluation of the same weights (one thread
    # in both; the tolerance only allows for a different summation order in the matrix products)
    alone = evaluate_run(whole, which="last", device="cpu")
    assert records[-1]["split"] == "valid" and records[-1]["step"] == 12
    assert records[-1]["loss"] == pytest.approx(alone["loss"], rel=1e-6, abs=0)
    assert records[-1]["characters"] == alone["characters"]

    # interrupted: SIGTERM to torchrun at step 6; every rank stops at the same step, rank 0 saves
    r = launch(tmp_path, cut, 6, corpus)
    assert r.returncode != 0  # torchrun reports the signal it got
    assert not re.search(r'File ".*rnnkit', r.stderr), r.stderr[-3000:]  # no traceback of ours
    match = re.search(r"interrupted \(SIGTERM\) at step (\d+)/12; checkpoint saved in (\S+)",
                      r.stderr)
    assert match and match.group(2) == cut, r.stderr[-3000:]
    stopped = int(match.group(1))
    assert 6 <= stopped < 12
    assert r.stderr.count("interrupted (SIGTERM)") == 1
    resume_line = re.search(r"resume with: (.*)", r.stderr).group(1)
    assert resume_line == f"torchrun --nproc-per-node 2 -m rnnkit train --resume {cut}"
    saved = C.load_last(cut)
    assert saved["meta"]["step"] == stopped and len(saved["ranks"]) == 2
    own0, own1 = saved["ranks"]
    assert not torch.equal(own0["rng"]["torch"], own1["rng"]["torch"])  # own dropout streams
    assert len(own1["carry"]) == 2 and not torch.equal(own0["carry"][0], own1["carry"][0])

    # a single process resuming a 2-process run says it is not the same run
    other = str(tmp_path / "one-process")
    shutil.copytree(cut, other)
    said = []
    config = TrainConfig(**{**C.read_json(os.path.join(other, "config.json"))["config"],
                            "out": other})
    train(config, resume=True, progress=False, echo=said.append)
    assert any("saved by 2 process(es), resumed by 1" in s for s in said), said

    # the printed command (torchrun with a free port) continues it to the same weights, bit for
    # bit: per-process dropout streams and carried states, optimizer, schedule, data position
    argv = shlex.split(resume_line)
    assert argv[0] == "torchrun"
    r = run(torchrun() + argv[1:] + ["-q"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {cut} at step {stopped} of 12" in r.stdout
    a, b = C.load_last(whole), C.load_last(cut)
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(
                b["optimizer"]["state"][index][key])), (index, key)
    for mine, theirs in zip(a["ranks"], b["ranks"]):
        assert torch.equal(mine["rng"]["torch"], theirs["rng"]["torch"])
        assert all(torch.equal(x, y) for x, y in zip(mine["carry"], theirs["carry"]))
    assert without_timing(whole) == without_timing(cut)  # losses and learning rates, every step
