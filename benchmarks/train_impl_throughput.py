"""Training tokens per second of `rnnkit train` models, --impl rnnkit vs --impl torch.

Both models train side by side in one process, alternating one optimiser step each, so that
load from other programs hits both alike; the median step time of each gives the ratio.

    PYTHONPATH=. python benchmarks/train_impl_throughput.py --cells lstm gru --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnkit.train.registry import build_model
from rnnkit.train.registry import build_task
from rnnkit.train.config import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    p.add_argument("--impls", nargs="+", default=["rnnkit", "torch"])
    p.add_argument("--steps", type=int, default=30, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hidden-size", type=int, default=TrainConfig.hidden_size)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; charlm, hidden "
          f"{a.hidden_size}, batch {a.batch_size}; {a.steps} timed steps each, interleaved")
    for cell in a.cells:
        runs = {}
        for impl in a.impls:
            c = TrainConfig(cell=cell, impl=impl, hidden_size=a.hidden_size,
                            batch_size=a.batch_size, seq_len=a.seq_len).resolved()
            task = build_task(c)
            torch.manual_seed(0)
            model = build_model(task.spec, c)
            runs[impl] = [task, model, torch.optim.AdamW(model.parameters(), 1e-3), None, []]
        for step in range(a.warmup + a.steps):
            for impl, run in runs.items():
                task, model, opt, carry, times = run
                batch = task.batch(step)
                t0 = time.perf_counter()
                loss, run[3] = task.loss(model, batch, carry)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step >= a.warmup:
                    times.append(time.perf_counter() - t0)
        tokens = runs[a.impls[0]][0].batch(0).tokens
        rates = {impl: tokens / statistics.median(run[4]) for impl, run in runs.items()}
        line = "  ".join(f"{impl} {r:,.0f} tok/s" for impl, r in rates.items())
        base = a.impls[-1]
        ratios = "  ".join(f"{impl}/{base} {rates[impl] / rates[base]:.2f}x"
                           for impl in a.impls[:-1])
        print(f"{cell}: {line}  {ratios}", flush=True)


if __name__ == "__main__":
    main()
