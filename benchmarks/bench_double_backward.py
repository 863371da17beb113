"""A gradient penalty through a 1-layer LSTM: what the double backward costs (issue 16). Not run
by pytest.

    PYTHONPATH=. python benchmarks/bench_double_backward.py [--seq-len 50 --batch 32 --size 128
        --repeats 15 --threads N --device cpu|cuda --no-save]

For rnnkit.LSTM and torch.nn.LSTM on the same weights (float32, input and hidden size --size):
  forward        y = lstm(x)[0]
  first backward y.pow(2).sum().backward(), the plain training step's backward
  double step    g = autograd.grad(y.pow(2).sum(), x, create_graph=True), then
                 g.pow(2).sum().backward() (the penalty's gradient reaches x and every weight)
Each sample runs the forward untimed and then times only its backward part, so "first backward"
and "double step" are the backward costs alone. Samples are interleaved across implementations
and modes; medians (and min-max) are reported, with the ratio double step / first backward.
Before timing, rnnkit's penalty gradients are checked against torch.nn's. On CUDA, torch.nn runs
with cuDNN off (cuDNN refuses double backward).
Writes benchmarks/results/double-backward-<machine>-<date>.md unless --no-save.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from typing import Callable

import torch

import rnnkit
from rnnkit.bench.machine import check_device, machine_info, machine_slug
from rnnkit.bench.report import header, results_dir


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def first_backward(lstm: torch.nn.Module, x: torch.Tensor, device: str) -> float:
    """Seconds of loss.backward() alone (the forward runs before the clock starts)."""
    lstm.zero_grad(set_to_none=True)
    leaf = x.detach().requires_grad_()
    loss = lstm(leaf)[0].pow(2).sum()
    _sync(device)
    start = time.perf_counter()
    loss.backward()
    _sync(device)
    return time.perf_counter() - start


def double_step(lstm: torch.nn.Module, x: torch.Tensor, device: str) -> float:
    """Seconds of the gradient penalty's backward: grad with create_graph, then the penalty's
    backward (the forward runs before the clock starts)."""
    lstm.zero_grad(set_to_none=True)
    leaf = x.detach().requires_grad_()
    loss = lstm(leaf)[0].pow(2).sum()
    _sync(device)
    start = time.perf_counter()
    (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
    g.pow(2).sum().backward()
    _sync(device)
    return time.perf_counter() - start


def forward(lstm: torch.nn.Module, x: torch.Tensor, device: str) -> float:
    """Seconds of the forward that builds the graph (for scale)."""
    leaf = x.detach().requires_grad_()
    _sync(device)
    start = time.perf_counter()
    lstm(leaf)
    _sync(device)
    return time.perf_counter() - start


def penalty_grads(lstm: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The penalty's gradients of x and of every weight."""
    leaf = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(lstm(leaf)[0].pow(2).sum(), leaf, create_graph=True)
    return list(torch.autograd.grad(g.pow(2).sum(), [leaf, *lstm.parameters()]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128, help="input and hidden size")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(args.device)
    meta = machine_info(args.device)
    meta["command"] = "python benchmarks/bench_double_backward.py " + " ".join(sys.argv[1:])
    print(header(meta))

    # cuDNN has no double backward (it raises): torch.nn runs without it, on its native kernels.
    torch.backends.cudnn.enabled = False
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(args.size, args.size).to(args.device)
    ours = rnnkit.from_torch(theirs).to(args.device)
    x = torch.randn(args.seq_len, args.batch, args.size, device=args.device)
    lstms = {"rnnkit": ours, "torch": theirs}

    want = penalty_grads(theirs, x)
    got = penalty_grads(ours, x)
    err = max(((a - b).abs().max() / (1 + b.abs().max())).item() for a, b in zip(got, want))
    if err > 1e-3:
        print(f"rnnkit's penalty gradients differ from torch.nn's by {err:.3g} (relative); "
              "not timed", file=sys.stderr)
        return 1

    modes: dict[str, Callable[[torch.nn.Module, torch.Tensor, str], float]] = {
        "forward": forward, "first backward": first_backward, "double step": double_step}
    for lstm in lstms.values():  # warm-up: allocator, thread pool, lazy imports
        for run in modes.values():
            run(lstm, x, args.device)
    samples: dict[tuple[str, str], list[float]] = {(i, m): [] for i in lstms for m in modes}
    for _ in range(args.repeats):
        for impl, lstm in lstms.items():
            for mode, run in modes.items():
                samples[impl, mode].append(run(lstm, x, args.device))

    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    head = f"{'impl':<7} {'mode':<15} {'median ms':>10} {'min-max ms':>15}"
    lines = [head, "-" * len(head)]
    for (impl, mode), s in samples.items():
        lines.append(f"{impl:<7} {mode:<15} {med[impl, mode]:>10.2f} "
                     f"{1000 * min(s):>7.2f}-{1000 * max(s):<7.2f}")
    lines.append("")
    for impl in lstms:
        lines.append(f"{impl}: double step / first backward = "
                     f"{med[impl, 'double step'] / med[impl, 'first backward']:.2f}x")
    lines.append(f"rnnkit double step / torch double step = "
                 f"{med['rnnkit', 'double step'] / med['torch', 'double step']:.2f}x")
    text = "\n".join(lines)
    print(text)
    print(f"(penalty gradients: rnnkit vs torch.nn, max relative difference {err:.2g})")

    if not args.no_save:
        meta["loadavg_end"] = list(os.getloadavg())
        stem = (f"double-backward-{machine_slug(args.device)}-"
                f"{datetime.date.today().isoformat()}")
        path = os.path.join(results_dir(), stem + ".md")
        with open(path, "w") as f:
            f.write(
                f"# Gradient penalty through a 1-layer LSTM, T={args.seq_len}, N={args.batch}, "
                f"I=H={args.size}, float32, {args.device}\n\n"
                f"- command: `PYTHONPATH=. {meta['command']}`\n- date (UTC): {meta['date_utc']}\n"
                f"- machine: {meta.get('gpu') or meta['cpu']}, {meta['cpu_count']} cores, "
                f"{meta['threads']} torch threads; load average at start "
                f"{', '.join(f'{v:.2f}' for v in meta.get('loadavg_1_5_15', []))}, at end "
                f"{', '.join(f'{v:.2f}' for v in meta['loadavg_end'])}\n"
                f"- versions: torch {meta['torch']}, rnnkit {meta['rnnkit']}, "
                f"python {meta['python']}\n\n"
                f"{args.repeats} interleaved samples per row, each one call; the forward runs "
                f"untimed before each backward sample. `first backward` is "
                f"`y.pow(2).sum().backward()`; `double step` is `autograd.grad(..., "
                f"create_graph=True)` then the penalty's `backward()`. Penalty gradients checked "
                f"against torch.nn first (max relative difference {err:.2g})."
                + (" torch.nn runs with cuDNN off (cuDNN refuses double backward)."
                   if args.device == "cuda" else "") + "\n\n"
                f"```\n{text}\n```\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
