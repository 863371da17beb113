"""Run folders as the user sees them: a saved config and how to resume it, loading a run for
evaluation, and what rnnkit eval / generate do with it."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import torch

from .. import __version__
from . import checkpoint as C
from . import data as D
from . import deploy
from .config import RESUMABLE, TrainConfig
from .distributed import pick_device
from .errors import UserError
from .models import check_fits
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
        if name in ("data", "valid_data") and value and old:  # saved absolute (older: as typed)
            value, old = os.path.abspath(value), os.path.abspath(old)
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


def has_checkpoint(run_dir: str) -> bool:
    """Whether a run folder holds a checkpoint (a run stopped before its first holds none)."""
    return any(os.path.exists(os.path.join(run_dir, name)) for name in (C.LAST, C.BEST))


def prepare_run_dir(config: TrainConfig, task) -> None:
    """Create the run folder with its config (data files fingerprinted), vocabularies and an
    empty metrics.jsonl. A folder that holds a run with a checkpoint is refused; one whose run
    stopped before its first checkpoint is started afresh."""
    out = config.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a folder")
    if has_checkpoint(out):
        raise UserError(f"{out} already holds a run; continue it with --resume {out} or choose "
                        "another --out")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    files = {name: {"path": path, **D.fingerprint(path)}
             for name in ("data", "valid_data") if (path := getattr(config, name))}
    C.write_json(os.path.join(out, C.CONFIG), {"rnnkit_version": __version__,
                                               "config": config.to_json(), "data_files": files})
    C.write_json(os.path.join(out, C.VOCAB), task.meta)
    C.atomic_write(os.path.join(out, C.METRICS), b"")  # not a stale one's records


def check_data(run_dir: str, allow_changed: bool = False,
               echo: Callable[[str], None] = print) -> None:
    """UserError when a data file of the run differs from the one it was trained on (its size
    and SHA-256 are in config.json; runs written before rnnkit recorded them are not checked).
    With ``allow_changed``, a note instead."""
    saved = C.read_json(os.path.join(run_dir, C.CONFIG))
    for name, old in (saved.get("data_files") or {}).items():
        if not isinstance(old, dict) or not isinstance(old.get("path"), str):
            continue
        new = D.fingerprint(old["path"])
        if (new["bytes"], new["sha256"]) == (old.get("bytes"), old.get("sha256")):
            continue
        what = (f"{old['path']} changed since {run_dir} was trained on it ({old.get('bytes')} "
                f"bytes, sha256 {str(old.get('sha256'))[:12]}...; now {new['bytes']} bytes, "
                f"sha256 {new['sha256'][:12]}...)")
        if not allow_changed:
            raise UserError(f"{what}: its split would not be the run's; restore the file, or "
                            "pass --allow-changed-data")
        echo(f"note: {what}; going on (--allow-changed-data)")


def load_run(run_dir: str, impl: Optional[str] = None, which: str = "best",
             device: str = "cpu", read_data: bool = True):
    """(config, task, model, checkpoint meta) of a run folder, ready for evaluation.
    ``impl`` swaps the recurrent implementation (weights load unchanged). Without ``read_data``
    a charlm task holds its vocabulary only (sampling needs nothing else from the data)."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run folder")
    config = saved_config(run_dir).resolved()
    if impl:
        config.impl = impl
    meta = C.read_json(os.path.join(run_dir, C.VOCAB))
    weights, ckpt_meta = C.load_weights(run_dir, which)
    C.check_finite(weights, os.path.join(run_dir, C.LAST if which == "last" else C.BEST))
    task = build_task(config, meta=meta, read_data=read_data)
    dev = pick_device(device)
    check_fits(task.spec, config, dev, training=False)
    model = build_model(task.spec, config, inference=True)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UserError(f"{run_dir}: the weights do not fit the saved config "
                        f"({str(e).splitlines()[0]})") from None
    return config, task, model.to(dev).eval(), ckpt_meta


# ---- evaluation and sampling --------------------------------------------------------------------
def evaluate_run(run_dir: str, data: Optional[str] = None, impl: Optional[str] = None,
                 which: str = "best", device: str = "auto", allow_changed_data: bool = False,
                 echo: Callable[[str], None] = print) -> dict:
    """Metrics of a run's checkpoint on its validation split, or on ``data``; UserError if the
    run's data files changed since training (check_data, for its own split), unless
    ``allow_changed_data``."""
    # on other data, charlm needs only the run's vocabulary, not its (possibly moved) text
    config, task, model, meta = load_run(run_dir, impl, which, device, read_data=data is None)
    if data is None:
        check_data(run_dir, allow_changed_data, echo)
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
    config, task, model, _ = load_run(run_dir, impl, which, "cpu" if onnx else device,
                                      read_data=False)
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
    config, _, model, _ = load_run(run_dir, "rnnkit", which, "cpu", read_data=False)
    out = out or os.path.join(run_dir, f"model.{fmt}")
    deploy.export(config.task, model, fmt, out)
    return out
