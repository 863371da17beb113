"""Processes and devices: torchrun's environment (rank, world size, the collectives train needs),
the device chosen by name, and Ctrl-C / SIGTERM turned into a flag checked between steps."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from .errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible to torch here")
    return torch.device(name)


class Distributed:
    """torchrun's environment: rank, world size; gloo on CPU, NCCL on GPU."""

    def __init__(self, device_name: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.on = self.world > 1
        if self.on:
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
        t = torch.tensor([1 if flag else 0], device=self._comm_device())
        self._run(lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX), [t])
        return bool(t.item())

    def close(self) -> None:
        if self.on:
            if dist.is_initialized():
                dist.destroy_process_group()


class StopSignals:
    """Turns the first SIGINT / SIGTERM into a flag checked between steps."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self.saved: dict = {}

    def __enter__(self) -> "StopSignals":
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
