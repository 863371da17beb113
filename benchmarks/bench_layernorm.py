"""The layer-normalised LSTM (issue 16 item 2), forward + backward, against the same layer in
plain PyTorch from the equations (rnnkit.reference's loop) and against rnnkit's plain LSTM. Not
run by pytest.

    PYTHONPATH=. python benchmarks/bench_layernorm.py [--repeats 3] [--T 100 --N 64 --H 512]
                                                     [--device cpu|cuda] [--json PATH]

One process, float32; the three are timed interleaved (one of each per round), each round a
forward and a backward of output.sum() + h_n.sum() + c_n.sum() with fresh gradients; medians of
the rounds are reported with the two ratios the issue targets:
    reference / rnnkit LN-LSTM   (target >= 4)
    rnnkit LN-LSTM / rnnkit LSTM (target <= 1.35)
Before timing, rnnkit's LN-LSTM is checked against the reference on the same weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import rnnkit
from rnnkit import reference as R


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(fn, x, device) -> float:
    """Seconds of one forward and backward of fn(x)."""
    _sync(device)
    start = time.perf_counter()
    out, finals = fn(x)
    loss = out.sum() + sum(f.sum() for f in finals)
    loss.backward()
    _sync(device)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the medians (seconds) here")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    T, N, H = args.T, args.N, args.H
    ln = rnnkit.LayerNormLSTM(H, H, device=device)
    plain = rnnkit.LSTM(H, H, device=device)
    x = torch.randn(T, N, H, device=device, requires_grad=True)
    zeros = torch.zeros(1, N, H, device=device)

    def reference(inp):
        out, (h, c) = R.layernorm_lstm(inp, (zeros, zeros), ln._layer_params())
        return out, (h, c)

    with torch.no_grad():
        got, want = ln(x[:5])[0], reference(x[:5])[0]
    err = (got - want).abs().max().item()
    print(f"check: max |rnnkit - reference| over 5 steps = {err:.2e}")
    if err > 1e-4:
        raise SystemExit("rnnkit's LN-LSTM disagrees with the reference; not timing it")

    entries = {"rnnkit LN-LSTM": ln, "reference LN-LSTM": reference, "rnnkit LSTM": plain}
    times: dict[str, list[float]] = {name: [] for name in entries}
    for name, fn in entries.items():  # warm-up
        _step(fn, x, device)
    for _ in range(args.repeats):
        for name, fn in entries.items():
            x.grad = None
            times[name].append(_step(fn, x, device))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"T={T} N={N} H={H} float32 {device}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats}:")
    for name, t in med.items():
        print(f"  {name:20s} {t * 1e3:9.1f} ms")
    speedup = med["reference LN-LSTM"] / med["rnnkit LN-LSTM"]
    overhead = med["rnnkit LN-LSTM"] / med["rnnkit LSTM"]
    print(f"  reference / rnnkit LN-LSTM = {speedup:.2f} (target >= 4)")
    print(f"  rnnkit LN-LSTM / rnnkit LSTM = {overhead:.2f} (target <= 1.35)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"T": T, "N": N, "H": H, "device": str(device), "median_s": med,
                       "speedup_vs_reference": speedup, "ratio_to_lstm": overhead}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
