"""Training, evaluation and sampling: ``train(config) -> metrics``.

AdamW with gradient clipping, linear warm-up then cosine decay, evaluation every ``eval_every``
steps, the best and the last checkpoint kept in the run folder (see checkpoint.py), exact resume,
a clean stop on Ctrl-C / SIGTERM, and DistributedDataParallel when started by torchrun.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import __version__
from . import checkpoint as C
from .config import RESUMABLE, TrainConfig
from .data import UserError


# ---- helpers ----------------------------------------------------------------------------------
def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to min_lr_ratio * lr at ``total``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, total - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible to torch here")
    return torch.device(name)


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


class _Distributed:
    """torchrun's environment: rank, world size; gloo on CPU, NCCL on GPU."""

    def __init__(self, device_name: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.on = self.world > 1
        if self.on:
            import torch.distributed as dist

            use_cuda = device_name != "cpu" and torch.cuda.is_available()
            if not dist.is_initialized():
                dist.init_process_group("nccl" if use_cuda else "gloo")
            if use_cuda:
                torch.cuda.set_device(self.local_rank)

    def device(self, name: str) -> torch.device:
        device = pick_device(name)
        if device.type == "cuda" and self.on:
            return torch.device("cuda", self.local_rank)
        return device

    def gather(self, tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Every process's ``tensors`` (the same names and shapes on each), in rank order, on
        every process (CPU copies). A collective: every rank must call it."""
        if not self.on:
            return [tensors]
        import torch.distributed as dist

        out: list[dict] = [{} for _ in range(self.world)]
        for name in sorted(tensors):
            mine = tensors[name].detach().to(self._comm_device()).contiguous()
            parts = [torch.empty_like(mine) for _ in range(self.world)]
            self._run(lambda: dist.all_gather(parts, mine), [mine, *parts])
            for r, part in enumerate(parts):
                out[r][name] = part.cpu()
        return out

    def _comm_device(self) -> torch.device:
        """Where collective tensors live: NCCL takes GPU tensors only, gloo CPU ones."""
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @staticmethod
    def _run(collective: Callable[[], object], tensors: list[torch.Tensor]) -> None:
        """``collective()`` on ``tensors``, then, with gloo, wait until its worker thread has let
        go of them. That thread drops its references to a finished collective a moment after
        waking us, and a Python tensor's last C++ reference takes the GIL to go: if this process
        is by then shutting down (a rank that leaves right after its last collective), the
        thread cannot have it and the process aborts ("terminate called without an active
        exception"; seen in 4 of about 110 two-process runs on a busy machine)."""
        import torch.distributed as dist

        counts = [t._use_count() for t in tensors]
        collective()
        if dist.get_backend() != "gloo":
            return
        deadline = time.monotonic() + 5.0
        while (any(t._use_count() > n for t, n in zip(tensors, counts))
               and time.monotonic() < deadline):
            time.sleep(0.0002)
        time.sleep(0)  # and let it take the GIL if it is waiting for it

    def barrier(self) -> None:
        if self.on:
            import torch.distributed as dist

            dist.barrier()

    def resume_command(self, run_dir: str) -> str:
        """The command that continues this run with the same number of processes."""
        if not self.on:
            return f"rnnkit train --resume {run_dir}"
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        nodes = "" if per_node == self.world else f"--nnodes {self.world // per_node} "
        more = "" if not nodes else " (with the same rendezvous options)"
        return (f"torchrun {nodes}--nproc-per-node {per_node} -m rnnkit train "
                f"--resume {run_dir}{more}")

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any."""
        if not self.on:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], device=self._comm_device())
        self._run(lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX), [t])
        return bool(t.item())

    def close(self) -> None:
        if self.on:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class _StopSignals:
    """Turns the first SIGINT / SIGTERM into a flag checked between steps."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self.saved: dict = {}

    def __enter__(self) -> "_StopSignals":
        def handler(signum, frame):
            if self.signal is not None:  # second press: give up at once
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            self.signal = signum

        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self.saved[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: no signal handling
            pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)


@dataclass
class TrainResult:
    """What train() returns."""

    run_dir: str  # the run folder
    step: int  # steps done in total
    total_steps: int  # steps the run was configured for
    interrupted: Optional[str] = None  # "SIGINT"/"SIGTERM"/"stopped" if cut short
    resume_command: str = ""  # the command that continues the run (torchrun's under torchrun)
    valid: dict = field(default_factory=dict)  # last validation metrics (rank 0 only)
    best: dict = field(default_factory=dict)  # best validation metrics and step (rank 0 only)
    seconds: float = 0.0  # wall time of this invocation's loop, evaluations included
    tokens_per_second: float = 0.0  # training tokens per second, evaluations excluded


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


def _prepare_run_dir(config: TrainConfig, task) -> None:
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
    from .models import build_model
    from .tasks import build_task

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


# ---- the loop ---------------------------------------------------------------------------------
def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          should_stop: Optional[Callable[[int], bool]] = None,
          echo: Callable[[str], None] = print) -> TrainResult:
    """Train per ``config`` (resuming from ``config.out`` if ``resume``) and return a TrainResult.

    ``should_stop(step)`` is asked after every step; True stops the run as Ctrl-C would (a
    checkpoint is saved). ``echo`` receives the one-line summaries (validation, final).
    """
    from tqdm import tqdm

    from .models import build_model, detach_state
    from .tasks import build_task

    config = config.resolved()
    if config.threads:
        torch.set_num_threads(config.threads)
    dist = _Distributed(config.device)
    try:
        device = dist.device(config.device)
        lead = dist.rank == 0
        meta = C.read_json(os.path.join(config.out, C.VOCAB)) if resume else None
        task = build_task(config, dist.rank, dist.world, meta)
        total = config.steps
        if total is None:
            total = (max(1, round(config.epochs * task.steps_per_epoch)) if config.epochs
                     else 500)
        torch.manual_seed(config.seed)
        model = build_model(task.spec, config).to(device)
        optimizer = _optimizer(model, config)
        step, carry, best = 0, None, {}
        horizon = total  # where the cosine decay ends: the run's first length, kept on resume
        if resume:
            state = C.load_last(config.out)
            try:
                model.load_state_dict(state["model"], strict=True)
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise UserError(f"{config.out}: checkpoint does not fit the saved config "
                                f"({str(e).splitlines()[0]})") from None
            step = int(state["meta"]["step"])
            best = state["meta"].get("best", {})
            horizon = int(state["meta"].get("horizon", state["meta"]["total_steps"]))
            if total < step:
                raise UserError(f"--resume {config.out}: the run is already at step {step}; "
                                f"{total} steps would end before it (give --steps above {step})")
            saved_world = len(state["ranks"])
            if saved_world == dist.world:  # each process continues its own streams
                own = state["ranks"][dist.rank]
                _set_rng_state(own["rng"], device)
                if own["carry"] is not None and task.carries_state:
                    carry = tuple(t.to(device) for t in own["carry"])
                    if config.cell != "lstm":
                        carry = carry[0]
            else:  # another split of the data: fresh dropout streams and hidden states
                torch.manual_seed(config.seed + 7 * dist.rank + step)
            if lead:
                C.truncate_metrics(config.out, step)
                echo(f"resuming {config.out} at step {step} of {total}")
                if saved_world != dist.world:
                    echo(f"note: saved by {saved_world} process(es), resumed by {dist.world}: "
                         "the data are split differently from here (and dropout streams and "
                         "carried states start afresh), so this is not the run an "
                         "uninterrupted one would have been")
                if total > horizon and step < total:
                    floor = config.lr * config.min_lr_ratio
                    echo(f"note: the learning-rate schedule ends at step {horizon} (the run's "
                         f"first length); steps {max(step, horizon) + 1}-{total} run at its "
                         f"floor, {floor:.3g}")
                elif total < horizon:
                    echo(f"note: stopping at step {total}, before the learning-rate schedule "
                         f"ends (step {horizon}, the run's first length)")
        else:
            if dist.rank:
                torch.manual_seed(config.seed + 7 * dist.rank)
            if lead:
                _prepare_run_dir(config, task)
        if dist.on:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                          else None)
        else:
            net = model

        def save_last() -> None:
            """Every rank hands its RNG and carried state to rank 0, which writes the file."""
            ranks = dist.gather(_own_state(device, carry))
            if lead:
                C.save_last(config.out, model.state_dict(), optimizer.state_dict(), ranks,
                            {"step": step, "total_steps": total, "horizon": horizon,
                             "best": best, "rnnkit_version": __version__,
                             "scheduler": {"step": step,
                                           "lr": learning_rate(config, step, horizon)}})

        def validate() -> dict:
            """Rank 0 evaluates the whole validation split; the others wait for it."""
            metrics = {}
            if lead:
                model.eval()
                metrics = task.evaluate(model, device)
                model.train()
            dist.barrier()
            return metrics

        result = TrainResult(config.out, step, total,
                             resume_command=dist.resume_command(config.out))
        bar = tqdm(total=total, initial=step, disable=not (progress and lead), file=sys.stderr,
                   dynamic_ncols=True, unit="step", desc=f"{config.task} {config.cell}")
        model.train()
        rate, tokens_done, busy, started = None, 0, 0.0, time.perf_counter()
        with _StopSignals() as stop:
            while step < total:
                t0 = time.perf_counter()
                lr = learning_rate(config, step, horizon)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = task.batch(step)
                batch.x, batch.y = batch.x.to(device), batch.y.to(device)
                loss, new_carry = task.loss(net, batch, carry)
                loss_value = loss.item()
                if not math.isfinite(loss_value):  # before the update: the weights stay good
                    raise UserError(
                        f"training diverged at step {step + 1} (loss {loss_value}); nothing of "
                        f"this step was applied or saved, and the last checkpoint in "
                        f"{config.out} is intact; lower --lr, or raise --warmup-steps")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                carry = detach_state(new_carry) if new_carry is not None else None
                step += 1
                dt = time.perf_counter() - t0
                busy += dt
                tokens_done += batch.tokens * dist.world
                now = batch.tokens * dist.world / max(dt, 1e-9)
                rate = now if rate is None else 0.9 * rate + 0.1 * now
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.2e}",
                                refresh=False)
                if lead and (step % config.log_every == 0 or step == total):
                    C.append_metrics(config.out, {"step": step, "split": "train",
                                                  "loss": loss_value, "lr": lr,
                                                  "tokens_per_s": rate,
                                                  "time": time.time()})
                if step % config.eval_every == 0 or step == total:
                    valid = validate()
                    if lead:
                        result.valid = valid
                        if not best or valid["loss"] < best["loss"]:
                            best = {**valid, "step": step}
                            C.save_best(config.out, model.state_dict(),
                                        {"step": step, "metrics": valid})
                        C.append_metrics(config.out, {"step": step, "split": "valid", **valid,
                                                      "time": time.time()})
                        summary = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in valid.items())
                        bar.clear()
                        echo(f"step {step}/{total}  valid {summary}")
                        bar.refresh()
                    save_last()
                asked = stop.signal is not None or (should_stop is not None and should_stop(step))
                if step < total and dist.any(asked):
                    save_last()
                    result.interrupted = ({signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
                                          .get(stop.signal, "stopped"))
                    break
        bar.close()
        result.step, result.best = step, best
        result.seconds = time.perf_counter() - started
        result.tokens_per_second = tokens_done / max(busy, 1e-9)
        return result
    finally:
        dist.close()


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
             which: str = "best", device: str = "auto"):
    """Yield ``length`` characters sampled from a charlm run, one at a time, after ``prompt``."""
    config, task, model, _ = load_run(run_dir, impl, which, device)
    if config.task != "charlm":
        raise UserError(f"{run_dir}: generate needs a charlm run, this one is {config.task!r}")
    unknown = sorted({c for c in prompt if c not in task.vocab.stoi})
    if unknown:
        raise UserError("--prompt: character(s) not in the run's vocabulary: "
                        + " ".join(repr(c) for c in unknown))
    if not prompt:
        prompt = "\n"
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev)
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    x = torch.tensor(task.vocab.encode(prompt), dtype=torch.long, device=dev).view(-1, 1)
    logits, state = model(x)
    last = logits[-1, 0]
    for _ in range(length):
        scores = last / max(temperature, 1e-6)
        if top_k:
            kth = torch.topk(scores, min(top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        index = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=g))
        yield task.vocab.itos[index]
        logits, state = model(torch.tensor([[index]], device=dev), hx=state)
        last = logits[-1, 0]
