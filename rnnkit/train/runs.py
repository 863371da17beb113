"""Run folders as the user sees them: a saved config and how to resume it, loading a run for
evaluation, and what rnnkit eval / generate do with it."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch

from .. import __version__
from . import checkpoint as C
from . import deploy
from .config import RESUMABLE, TrainConfig
from .distributed import pick_device
from .errors import UserError
from .registry import build_model, build_task


# ---- starting and resuming -------------------------------------------------------------------
def resume_config(run_dir: str, overrides: dict) -> TrainConfig:
    """The saved config of ``run_dir`` with ``overrides`` applied; UserError naming every
    override that contradicts the saved config in a field that cannot change mid-run."""
    saved = saved_config(run_dir)
    conflicts = []
    for name, value in overrides.items():
        old = getattr(saved, name)
        if isinstance(old, tuple):
            value = tuple(value)
        if name not in RESUMABLE and value != old:
            conflicts.append(f"--{name.replace('_', '-')} {value} (saved: {old})")
    if conflicts:
        raise UserError(f"--resume {run_dir}: options contradict the saved config: "
                        + "; ".join(conflicts))
    changes = {k: v for k, v in overrides.items() if k in RESUMABLE}
    if changes.get("epochs") is not None and "steps" not in changes:
        changes["steps"] = None  # --epochs on resume replaces a saved --steps
    return dataclasses.replace(saved, **changes, out=run_dir)


def saved_config(run_dir: str) -> TrainConfig:
    """The TrainConfig in RUN_DIR/config.json, every field checked (UserError naming the file,
    the field, what was expected and what came)."""
    path = os.path.join(run_dir, C.CONFIG)
    saved = C.read_json(path)
    if not isinstance(saved, dict) or "config" not in saved:
        raise UserError(f"{path}: expected an object with a \"config\" entry, got "
                        f"{type(saved).__name__}" + (f" with keys {', '.join(sorted(saved))}"
                                                     if isinstance(saved, dict) else ""))
    return TrainConfig.from_json(saved["config"], source=path)


def prepare_run_dir(config: TrainConfig, task) -> None:
    out = config.out
    if os.path.exists(os.path.join(out, C.CONFIG)) or os.path.exists(os.path.join(out, C.LAST)):
        raise UserError(f"{out} already holds a run; continue it with --resume {out} or choose "
                        "another --out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    C.write_json(os.path.join(out, C.CONFIG), {"rnnkit_version": __version__,
                                               "config": config.to_json()})
    C.write_json(os.path.join(out, C.VOCAB), task.meta)


def load_run(run_dir: str, impl: Optional[str] = None, which: str = "best",
             device: str = "cpu"):
    """(config, task, model, checkpoint meta) of a run folder, ready for evaluation.
    ``impl`` swaps the recurrent implementation (weights load unchanged)."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run folder")
    config = saved_config(run_dir).resolved()
    if impl:
        config.impl = impl
    meta = C.read_json(os.path.join(run_dir, C.VOCAB))
    weights, ckpt_meta = C.load_weights(run_dir, which)
    task = build_task(config, meta=meta)
    model = build_model(task.spec, config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UserError(f"{run_dir}: the weights do not fit the saved config "
                        f"({str(e).splitlines()[0]})") from None
    dev = pick_device(device)
    return config, task, model.to(dev).eval(), ckpt_meta


# ---- evaluation and sampling --------------------------------------------------------------------
def evaluate_run(run_dir: str, data: Optional[str] = None, impl: Optional[str] = None,
                 which: str = "best", device: str = "auto") -> dict:
    """Metrics of a run's checkpoint on its validation split, or on ``data``."""
    config, task, model, meta = load_run(run_dir, impl, which, device)
    metrics = task.evaluate(model, next(model.parameters()).device, data)
    return {"task": config.task, "step": meta.get("step"), **metrics}


def run_task(run_dir: str) -> str:
    """The task a run folder was trained on."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run folder")
    return C.read_json(os.path.join(run_dir, C.CONFIG))["config"]["task"]


@torch.no_grad()
def translate(run_dir: str, prompt: str, impl: Optional[str] = None, which: str = "best",
              device: str = "auto") -> list[tuple[str, str]]:
    """(number, words) pairs greedily decoded by a seq2seq run for the numbers in ``prompt``."""
    config, task, model, _ = load_run(run_dir, impl, which, device)
    if config.task != "seq2seq":
        raise UserError(f"{run_dir}: translate needs a seq2seq run, this one is {config.task!r}")
    return task.translate(model, next(model.parameters()).device, prompt)


@torch.no_grad()
def generate(run_dir: str, prompt: str = "\n", length: int = 500, temperature: float = 0.8,
             top_k: Optional[int] = None, seed: Optional[int] = None, impl: Optional[str] = None,
             which: str = "best", device: str = "auto", onnx: Optional[str] = None):
    """Yield ``length`` characters sampled from a charlm run, one at a time, after ``prompt``.
    ``onnx``: a step model of the run written by ``rnnkit export``, run by onnxruntime on the
    CPU instead of the PyTorch model (the same characters for the same seed)."""
    config, task, model, _ = load_run(run_dir, impl, which, "cpu" if onnx else device)
    if config.task != "charlm":
        raise UserError(f"{run_dir}: generate needs a charlm run, this one is {config.task!r}")
    unknown = sorted({c for c in prompt if c not in task.vocab.stoi})
    if unknown:
        raise UserError("--prompt: character(s) not in the run's vocabulary: "
                        + " ".join(repr(c) for c in unknown))
    step = deploy.onnx_step(onnx, model) if onnx else deploy.torch_step(model)
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev)
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    for index in sample(step, task.vocab.encode(prompt or "\n"), length, temperature, top_k, g):
        yield task.vocab.itos[index]


def sample(step: deploy.Step, prompt: list[int], length: int, temperature: float,
           top_k: Optional[int], generator: torch.Generator):
    """Yield ``length`` symbol indices drawn one at a time from ``step``'s logits, each fed back
    as the next input, after the ``prompt`` indices (at least one)."""
    last, state = step(prompt, None)
    for _ in range(length):
        scores = last / max(temperature, 1e-6)
        if top_k:
            kth = torch.topk(scores, min(top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        index = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
        yield index
        last, state = step([index], state)


def export_run(run_dir: str, fmt: str, out: Optional[str] = None, which: str = "best") -> str:
    """Writes a run's model in its deployment form (deploy.py) as ``fmt`` (onnx, pt2) to
    ``out`` (default: RUN_DIR/model.<fmt>); returns the path."""
    deploy.check_task(saved_config(run_dir).task)  # before loading anything
    config, _, model, _ = load_run(run_dir, "rnnkit", which, "cpu")
    out = out or os.path.join(run_dir, f"model.{fmt}")
    deploy.export(config.task, model, fmt, out)
    return out
