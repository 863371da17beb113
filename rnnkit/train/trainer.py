"""The training loop: ``train(config) -> TrainResult``, run by a Trainer.

AdamW with gradient clipping, linear warm-up then cosine decay, evaluation every ``eval_every``
steps, the best and the last checkpoint kept in the run folder (see checkpoint.py), exact resume,
a clean stop on Ctrl-C / SIGTERM, and DistributedDataParallel when started by torchrun.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import __version__
from . import checkpoint as C
from .config import TrainConfig, cell_family
from .distributed import Distributed, StopSignals
from .errors import UserError
from .models import check_fits, detach_state
from .registry import build_model, build_task
from .runs import check_data, has_checkpoint, prepare_run_dir
from .selection import Selection


# ---- helpers ----------------------------------------------------------------------------------
def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to min_lr_ratio * lr at ``total``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, total - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _rng_state(device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _own_state(device: torch.device, carry) -> dict[str, torch.Tensor]:
    """What this process alone holds, named as checkpoint.save_last takes it: its RNG states
    (dropout) and its carried hidden state."""
    own = {f"rng.{k}": v for k, v in _rng_state(device).items()}
    if carry is not None:
        for i, t in enumerate(carry if isinstance(carry, tuple) else (carry,)):
            own[f"carry.{i}"] = t
    return own


def _set_rng_state(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    def decays(name: str, p: torch.Tensor) -> bool:  # weight matrices, not embeddings or biases
        return p.ndim >= 2 and not name.startswith("embed")

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    rest = [p for n, p in model.named_parameters() if not decays(n, p)]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


@dataclass
class TrainResult:
    """What train() returns."""

    run_dir: str  # the run folder
    step: int  # steps done in total
    total_steps: int  # steps the run was configured for
    interrupted: Optional[str] = None  # "SIGINT"/"SIGTERM"/"stopped" if cut short
    resume_command: str = ""  # the command that continues the run (torchrun's under torchrun)
    valid: dict = field(default_factory=dict)  # last validation metrics (rank 0 only)
    best: dict = field(default_factory=dict)  # best validation metrics, step and select_by
    #                                            (the metric that chose it; rank 0 only)
    seconds: float = 0.0  # wall time of this invocation's loop, evaluations included
    tokens_per_second: float = 0.0  # training tokens per second, evaluations excluded


class Trainer:
    """One process's share of a training run: its task, model, optimiser and position.

    ``Trainer(config, resume)`` builds everything and, with ``resume``, restores the run folder's
    last checkpoint (else it creates the folder); ``run()`` loops ``step()`` with ``validate()``
    and ``save_last()`` on schedule; ``close()`` leaves the process group.
    """

    def __init__(self, config: TrainConfig, resume: bool = False,
                 echo: Callable[[str], None] = print, allow_changed_data: bool = False) -> None:
        self.config = config = config.resolved()
        # the bounds a saved config.json is held to, so that what is saved can be read back
        TrainConfig.from_json(config.to_json(), source="the settings")
        self.echo = echo
        self.allow_changed_data = allow_changed_data
        if config.threads:
            cpus = os.cpu_count() or 1
            if config.threads > cpus:
                echo(f"note: --threads {config.threads} is more than the {cpus} CPU(s) here; "
                     "threads beyond them only wait on each other (much slower)")
            torch.set_num_threads(config.threads)
        self.selection = Selection.of(config.task, config.select_by)
        self.dist = Distributed(config.device)
        try:
            self._build(resume)
        except BaseException:
            self.dist.close()
            raise

    def _build(self, resume: bool) -> None:
        config, dist = self.config, self.dist
        self.device = dist.device(config.device)
        self.lead = dist.rank == 0
        meta = C.read_json(os.path.join(config.out, C.VOCAB)) if resume else None
        self.task = build_task(config, dist.rank, dist.world, meta)
        if resume:
            check_data(config.out, self.allow_changed_data,
                       self.echo if dist.rank == 0 else (lambda s: None))
        total = config.steps
        if total is None:
            total = (max(1, round(config.epochs * self.task.steps_per_epoch)) if config.epochs
                     else 500)
        self.total = total
        check_fits(self.task.spec, config, self.device, training=True)
        torch.manual_seed(config.seed)
        self.model = build_model(self.task.spec, config).to(self.device)
        self.optimizer = _optimizer(self.model, config)
        self.step_done, self.carry, self.best = 0, None, {}
        self.horizon = total  # where the cosine decay ends: the run's first length, kept on resume
        if resume and os.path.exists(os.path.join(config.out, C.LAST)):
            self.resume()
        else:
            if dist.rank:
                torch.manual_seed(config.seed + 7 * dist.rank)
            if self.lead and resume:  # stopped before its first checkpoint: start it over
                self.echo(f"{config.out} holds no checkpoint yet: starting it from step 0")
                C.atomic_write(os.path.join(config.out, C.METRICS), b"")
            elif self.lead:
                prepare_run_dir(config, self.task)
        self.net = (DistributedDataParallel(self.model, device_ids=[self.device]
                                            if self.device.type == "cuda" else None)
                    if dist.on else self.model)

    def resume(self) -> None:
        """Restore weights, optimiser, step, schedule and (same world size) each process's RNG
        and carried state from the run folder's last checkpoint."""
        config, dist, device, total = self.config, self.dist, self.device, self.total
        state = C.load_last(config.out)
        C.check_finite(state["model"], os.path.join(config.out, C.LAST))
        try:
            self.model.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{config.out}: checkpoint does not fit the saved config "
                            f"({str(e).splitlines()[0]})") from None
        step = self.step_done = int(state["meta"]["step"])
        self.best = state["meta"].get("best", {})
        horizon = self.horizon = int(state["meta"].get("horizon", state["meta"]["total_steps"]))
        if total < step:
            raise UserError(f"--resume {config.out}: the run is already at step {step}; "
                            f"{total} steps would end before it (give --steps above {step})")
        saved_world = len(state["ranks"])
        if saved_world == dist.world:  # each process continues its own streams
            own = state["ranks"][dist.rank]
            _set_rng_state(own["rng"], device)
            if own["carry"] is not None and self.task.carries_state:
                carry = tuple(t.to(device) for t in own["carry"])
                self.carry = carry if cell_family(config.cell) == "lstm" else carry[0]
        else:  # another split of the data: fresh dropout streams and hidden states
            torch.manual_seed(config.seed + 7 * dist.rank + step)
        if not self.lead:
            return
        C.truncate_metrics(config.out, step)
        self.echo(f"resuming {config.out} at step {step} of {total}")
        if saved_world != dist.world:
            self.echo(f"note: saved by {saved_world} process(es), resumed by {dist.world}: "
                      "the data are split differently from here (and dropout streams and "
                      "carried states start afresh), so this is not the run an "
                      "uninterrupted one would have been")
        if total > horizon and step < total:
            floor = config.lr * config.min_lr_ratio
            self.echo(f"note: the learning-rate schedule ends at step {horizon} (the run's "
                      f"first length); steps {max(step, horizon) + 1}-{total} run at its "
                      f"floor, {floor:.3g}")
        elif total < horizon:
            self.echo(f"note: stopping at step {total}, before the learning-rate schedule "
                      f"ends (step {horizon}, the run's first length)")

    def step(self) -> tuple[float, float, int]:
        """One optimiser step; returns (loss, learning rate, tokens of all processes). A loss
        that is not finite raises UserError before anything of the step is applied."""
        config, device = self.config, self.device
        lr = learning_rate(config, self.step_done, self.horizon)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.task.batch(self.step_done)
        batch.x, batch.y = batch.x.to(device), batch.y.to(device)
        loss, new_carry = self.task.loss(self.net, batch, self.carry)
        loss_value = loss.item()
        if not math.isfinite(loss_value):  # before the update: the weights stay good
            self._diverged(f"at step {self.step_done + 1} (loss {loss_value})",
                           "nothing of this step was applied or saved")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.carry = detach_state(new_carry) if new_carry is not None else None
        self.step_done += 1
        return loss_value, lr, batch.tokens * self.dist.world

    def _diverged(self, what: str, kept: str) -> None:
        """UserError: training diverged (``what``: where and how; ``kept``: what became of the
        step), saying truthfully whether an earlier checkpoint exists."""
        out = self.config.out
        earlier = (f"the last checkpoint in {out} is intact" if has_checkpoint(out) else
                   f"no checkpoint had been saved yet (train again with the same --out, or "
                   f"--resume {out} to start over)")
        raise UserError(f"training diverged {what}; {kept}, and "
                        f"{earlier}; lower --lr, or raise --warmup-steps")

    def _check_weights(self) -> None:
        """Before a save: an update can turn the weights infinite while the loss that led to it
        was finite; such weights are never written."""
        if not all(bool(p.isfinite().all()) for p in self.model.parameters()):
            self._diverged(f"by step {self.step_done} (an update made weights NaN or infinite)",
                           "nothing was saved")

    def validate(self) -> dict:
        """Rank 0 evaluates the whole validation split (and keeps the best checkpoint); the
        others wait for it. Returns the metrics (empty on other ranks)."""
        self._check_weights()
        metrics = {}
        if self.lead:
            self.model.eval()
            metrics = self.task.evaluate(self.model, self.device)
            self.model.train()
            step = self.step_done
            chosen = self.selection.improves(metrics, self.best)
            if chosen:
                self.best = {**metrics, "step": step, "select_by": self.selection.metric}
                C.save_best(self.config.out, self.model.state_dict(),
                            {"step": step, "metrics": metrics,
                             "select_by": self.selection.metric})
            C.append_metrics(self.config.out, {"step": step, "split": "valid", **metrics,
                                               "best": chosen, "time": time.time()})
        self.dist.barrier()
        return metrics

    def save_last(self) -> None:
        """Every rank hands its RNG and carried state to rank 0, which writes the file."""
        self._check_weights()
        ranks = self.dist.gather(_own_state(self.device, self.carry))
        if self.lead:
            step = self.step_done
            C.save_last(self.config.out, self.model.state_dict(), self.optimizer.state_dict(),
                        ranks, {"step": step, "total_steps": self.total, "horizon": self.horizon,
                                "best": self.best, "rnnkit_version": __version__,
                                "scheduler": {"step": step, "lr": learning_rate(
                                    self.config, step, self.horizon)}})

    def run(self, progress: bool = True,
            should_stop: Optional[Callable[[int], bool]] = None) -> TrainResult:
        """Step until the configured total, validating and saving every eval_every steps, or
        until a signal or ``should_stop(step)`` stops the run (a checkpoint is saved)."""
        config, total, lead = self.config, self.total, self.lead
        result = TrainResult(config.out, self.step_done, total,
                             resume_command=self.dist.resume_command(config.out))
        bar = tqdm(total=total, initial=self.step_done, disable=not (progress and lead),
                   file=sys.stderr, dynamic_ncols=True, unit="step",
                   desc=f"{config.task} {config.cell}")
        self.model.train()
        rate, tokens_done, busy, started = None, 0, 0.0, time.perf_counter()
        with StopSignals() as stop:
            while self.step_done < total:
                t0 = time.perf_counter()
                loss, lr, tokens = self.step()
                step = self.step_done
                dt = time.perf_counter() - t0
                busy += dt
                tokens_done += tokens
                now = tokens / max(dt, 1e-9)
                rate = now if rate is None else 0.9 * rate + 0.1 * now
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.2e}",
                                refresh=False)
                if lead and (step % config.log_every == 0 or step == total):
                    C.append_metrics(config.out, {"step": step, "split": "train", "loss": loss,
                                                  "lr": lr, "tokens_per_s": rate,
                                                  "time": time.time()})
                if step % config.eval_every == 0 or step == total:
                    valid = self.validate()
                    if lead:
                        result.valid = valid
                        summary = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in valid.items())
                        bar.clear()
                        self.echo(f"step {step}/{total}  valid {summary}")
                        bar.refresh()
                    self.save_last()
                asked = stop.signal is not None or (should_stop is not None and should_stop(step))
                if step < total and self.dist.any(asked):
                    self.save_last()
                    result.interrupted = ({signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
                                          .get(stop.signal, "stopped"))
                    break
        bar.close()
        result.step, result.best = self.step_done, self.best
        result.seconds = time.perf_counter() - started
        result.tokens_per_second = tokens_done / max(busy, 1e-9)
        return result

    def close(self) -> None:
        self.dist.close()


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          should_stop: Optional[Callable[[int], bool]] = None,
          echo: Callable[[str], None] = print, allow_changed_data: bool = False) -> TrainResult:
    """Train per ``config`` (resuming from ``config.out`` if ``resume``) and return a TrainResult.

    ``should_stop(step)`` is asked after every step; True stops the run as Ctrl-C would (a
    checkpoint is saved). ``echo`` receives the one-line summaries (validation, final).
    ``allow_changed_data``: resume although the data files differ from the run's (a note).
    """
    trainer = Trainer(config, resume, echo, allow_changed_data)
    try:
        return trainer.run(progress, should_stop)
    finally:
        trainer.close()
