"""What zoneout and weight-drop cost over the plain layer (issue 16's target: together at most
15% over the plain rnnkit.LSTM, forward + backward, T=100 N=64 I=H=512). Not run by pytest.

    PYTHONPATH=. python -m benchmarks.bench_variants [--repeats 7] [--T 100 --N 64 --H 512]
                                                      [--cell LSTM|GRU] [--json PATH]

One process, float32, training mode. The layers share one set of weights and are timed
interleaved (one of each per round); each round is a forward and a backward of output.sum() with
fresh gradients, masks drawn inside the timed region (they are part of the cost). Medians of the
rounds and their ratios to the plain layer are printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import rnnkit


def _round(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward and backward of layer(x)."""
    layer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out, _ = layer(x)
    out.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--H", type=int, default=512)
    parser.add_argument("--cell", choices=("LSTM", "GRU"), default="LSTM")
    parser.add_argument("--zoneout", type=float, default=0.1)
    parser.add_argument("--weight-drop", type=float, default=0.5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    cls = getattr(rnnkit, args.cell)
    H = args.H
    variants = {
        "plain": {},
        "zoneout": {"zoneout": args.zoneout},
        "weight_drop": {"weight_drop": args.weight_drop},
        "zoneout+weight_drop": {"zoneout": args.zoneout, "weight_drop": args.weight_drop},
    }
    layers = {name: cls(H, H, **kw) for name, kw in variants.items()}
    state = layers["plain"].state_dict()
    for layer in layers.values():
        layer.load_state_dict(state)
        layer.train()
    x = torch.randn(args.T, args.N, H, requires_grad=True)

    for layer in layers.values():  # warm-up: first-touch memory, packed weights, thread pools
        _round(layer, x)
    times: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(args.repeats):
        for name, layer in layers.items():
            times[name].append(_round(layer, x))

    plain = statistics.median(times["plain"])
    rows = {name: {"median_ms": 1e3 * statistics.median(t),
                   "ratio_to_plain": statistics.median(t) / plain} for name, t in times.items()}
    print(f"{args.cell} T={args.T} N={args.N} I=H={H}, float32, fwd+bwd, {torch.get_num_threads()} "
          f"threads, median of {args.repeats} interleaved rounds "
          f"(zoneout p={args.zoneout}, weight_drop p={args.weight_drop})")
    for name, row in rows.items():
        print(f"  {name:22s} {row['median_ms']:8.1f} ms   x{row['ratio_to_plain']:.3f}")
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "args": vars(args)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
