"""Training tokens per second of `rnnkit train` models, --impl rnnkit vs --impl torch, and
--precision fp32 vs bf16 (the trainer's autocast forward).

The models (one per implementation and precision) train side by side in one process,
alternating one optimiser step each, so that load from other programs hits all alike; the median
step time of each gives the ratios (against the last implementation, and against fp32).

    PYTHONPATH=. python benchmarks/train_impl_throughput.py --cells lstm gru --steps 30
    PYTHONPATH=. python benchmarks/train_impl_throughput.py --cells lstm --impls rnnkit \
        --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnkit.train.registry import build_model
from rnnkit.train.registry import build_task
from rnnkit.train.config import TrainConfig
from rnnkit.train.precision import forward_context


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    p.add_argument("--impls", nargs="+", default=["rnnkit", "torch"])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
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
    cpu = torch.device("cpu")
    for cell in a.cells:
        runs = {}
        for impl in a.impls:
            for precision in a.precisions:
                c = TrainConfig(cell=cell, impl=impl, hidden_size=a.hidden_size,
                                batch_size=a.batch_size, seq_len=a.seq_len).resolved()
                task = build_task(c)
                torch.manual_seed(0)
                model = build_model(task.spec, c)
                opt = torch.optim.AdamW(model.parameters(), 1e-3)
                runs[impl, precision] = [task, model, opt, None, []]
        for step in range(a.warmup + a.steps):
            for (impl, precision), run in runs.items():
                task, model, opt, carry, times = run
                batch = task.batch(step)
                t0 = time.perf_counter()
                with forward_context(precision, cpu):
                    loss, run[3] = task.loss(model, batch, carry)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step >= a.warmup:
                    times.append(time.perf_counter() - t0)
        tokens = next(iter(runs.values()))[0].batch(0).tokens
        rates = {key: tokens / statistics.median(run[4]) for key, run in runs.items()}
        line = "  ".join(f"{impl} {prec} {r:,.0f} tok/s" for (impl, prec), r in rates.items())
        base = a.impls[-1]
        ratios = [f"{impl}/{base} {prec} {rates[impl, prec] / rates[base, prec]:.2f}x"
                  for impl in a.impls[:-1] for prec in a.precisions]
        ratios += [f"{impl} bf16/fp32 {rates[impl, 'bf16'] / rates[impl, 'fp32']:.2f}x"
                   for impl in a.impls if {"fp32", "bf16"} <= set(a.precisions)]
        print(f"{cell}: {line}  {'  '.join(ratios)}", flush=True)


if __name__ == "__main__":
    main()
