"""GPU timings of rnnkit's CUDA kernels against torch.nn (cuDNN on and off), with CUDA events.

    python -m benchmarks.bench_gpu --json results/bench.json   (from the source folder)

Cases (issue 8's targets):
  1. LSTM and GRU, T=100 N=64 I=H=512, float32, forward and forward+backward: rnnkit vs torch.nn
     with cuDNN and with cuDNN disabled.
  2. LSTM H=768 N=16 T=1024 (I=768), float16 and bfloat16, forward and forward+backward.
  3. Packed vs padded, LSTM N=64 I=H=512 T=100, random lengths: the packed time over the padded
     time, against real tokens over padded tokens.
Each timing is the median of --iters runs after --warmup runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

import rnnkit


def time_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_pair(mode: str, I: int, H: int, dtype: torch.dtype):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, mode)(I, H).to("cuda", dtype)
    ours = rnnkit.from_torch(theirs)
    return ours, theirs


def runners(module, x, grad):
    """(forward, forward+backward) closures for one module and input."""
    params = list(module.parameters())

    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        out = module(x)[0]
        data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
        torch.autograd.grad(data, params + ([x] if isinstance(x, torch.Tensor) and x.requires_grad else []),
                            grad if grad is not None else torch.ones_like(data))

    return fwd, fwd_bwd


def bench_layer(mode, T, N, I, H, dtype, warmup, iters, with_nocudnn=True):
    ours, theirs = make_pair(mode, I, H, dtype)
    x = torch.randn(T, N, I, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.randn(T, N, H, device="cuda", dtype=dtype)
    rows = []
    # cuDNN computes float32 RNNs with TF32 tensor cores unless told not to
    # (torch.backends.cudnn.allow_tf32 is on by default); rnnkit's float32 products follow
    # torch.backends.cuda.matmul.allow_tf32, off by default. The "no-tf32" row is cuDNN at
    # rnnkit's precision.
    tf32 = torch.backends.cudnn.allow_tf32
    impls = [("rnnkit", ours, True, tf32), ("torch.nn cudnn", theirs, True, tf32)]
    if dtype == torch.float32 and tf32:
        impls.append(("torch.nn cudnn no-tf32", theirs, True, False))
    if with_nocudnn:
        impls.append(("torch.nn no-cudnn", theirs, False, tf32))
    for name, module, cudnn, allow_tf32 in impls:
        with torch.backends.cudnn.flags(enabled=cudnn, allow_tf32=allow_tf32):
            fwd, fwd_bwd = runners(module, x, g)
            row = {"case": f"{mode} T={T} N={N} I={I} H={H} {str(dtype).replace('torch.', '')}",
                   "impl": name}
            try:
                row["fwd_ms"] = time_ms(fwd, warmup, iters)
                row["fwd_bwd_ms"] = time_ms(fwd_bwd, warmup, iters)
            except RuntimeError as error:  # e.g. a dtype cuDNN does not take
                row["error"] = str(error).splitlines()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_packed(T, N, I, H, warmup, iters):
    ours, theirs = make_pair("LSTM", I, H, torch.float32)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(T // 4, T + 1, (N,), generator=gen).sort(descending=True).values
    lengths[0] = T
    x = torch.randn(T, N, I, device="cuda")
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=True)
    ratio_tokens = float(lengths.sum()) / (T * N)
    rows = []
    for name, module in (("rnnkit", ours), ("torch.nn cudnn", theirs)):
        result = {"case": f"LSTM packed vs padded T={T} N={N} I={I} H={H} float32", "impl": name,
                  "real_over_padded_tokens": ratio_tokens}
        for label, inp in (("padded", x), ("packed", packed)):
            fwd, fwd_bwd = runners(module, inp, None)
            result[f"{label}_fwd_ms"] = time_ms(fwd, warmup, iters)
            result[f"{label}_fwd_bwd_ms"] = time_ms(fwd_bwd, warmup, iters)
        result["packed_over_padded_fwd"] = result["packed_fwd_ms"] / result["padded_fwd_ms"]
        result["target_packed_over_padded"] = 1.1 * ratio_tokens
        rows.append(result)
        print(json.dumps(result), flush=True)
    return rows


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """Issue 8's performance targets, each with the measured value and whether it is met."""
    by = {(r["case"], r["impl"]): r for r in rows}
    out = []

    def add(target, value, met):
        out.append({"target": target, "value": value, "met": bool(met)})

    for case in sorted({r["case"] for r in rows if "float32" in r["case"] and "packed" not in r["case"]}):
        ours, cudnn, exact, plain = (by.get((case, k), {}) for k in (
            "rnnkit", "torch.nn cudnn", "torch.nn cudnn no-tf32", "torch.nn no-cudnn"))
        for phase in ("fwd_ms", "fwd_bwd_ms"):
            if phase in ours and phase in cudnn:
                ratio = ours[phase] / cudnn[phase]
                add(f"{case} {phase[:-3]}: rnnkit / cuDNN <= 1.25", ratio, ratio <= 1.25)
            if phase in ours and phase in exact:
                ratio = ours[phase] / exact[phase]
                add(f"{case} {phase[:-3]}: rnnkit / cuDNN without TF32 (same precision) <= 1.25",
                    ratio, ratio <= 1.25)
            if phase in ours and phase in plain:
                speedup = plain[phase] / ours[phase]
                add(f"{case} {phase[:-3]}: torch.nn without cuDNN / rnnkit >= 1.5", speedup, speedup >= 1.5)
    flashrnn = {"fwd_ms": 4.87, "fwd_bwd_ms": 13.61}  # published, H100, fp16
    for r in rows:
        if r["impl"] == "rnnkit" and "H=768" in r["case"]:
            for phase, ms in flashrnn.items():
                if phase in r:
                    add(f"{r['case']} {phase[:-3]}: rnnkit ms < FlashRNN's published H100 {ms} ms "
                        "(meaningful on an H100 only)", r[phase], r[phase] < ms)
        if r["impl"] == "rnnkit" and "packed_over_padded_fwd" in r:
            add(f"{r['case']}: packed / padded time <= 1.1 x real / padded tokens "
                f"({r['target_packed_over_padded']:.3g})", r["packed_over_padded_fwd"],
                r["packed_over_padded_fwd"] <= r["target_packed_over_padded"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="short sequences (a smoke run)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no GPU visible")
    if "cuda" not in rnnkit.build_info()["backends"]:
        sys.exit("bench_gpu: rnnkit was built without CUDA kernels (RNNKIT_CUDA=1)")
    scale = 10 if args.quick else 1
    rows = []
    for mode in ("LSTM", "GRU"):
        rows += bench_layer(mode, 100 // scale, 64, 512, 512, torch.float32, args.warmup, args.iters)
    for dtype in (torch.float16, torch.bfloat16):
        rows += bench_layer("LSTM", 1024 // scale, 16, 768, 768, dtype, args.warmup, args.iters,
                            with_nocudnn=False)
    rows += bench_packed(100 // scale, 64, 512, 512, args.warmup, args.iters)
    targets = evaluate_targets(rows)
    for t in targets:
        print(("meets  " if t["met"] else "misses ") + t["target"] + f"  ({t['value']:.3g})", flush=True)
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "rnnkit": rnnkit.build_info(),
        "warmup": args.warmup,
        "iters": args.iters,
        "quick": args.quick,
        "published_h100_lstm_h768_n16_t1024_fp16_ms": {
            "cudnn": {"fwd": 2.01, "fwd_bwd": 5.19}, "flashrnn": {"fwd": 4.87, "fwd_bwd": 13.61}},
        "results": rows,
        "targets": targets,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
