"""What a benchmark writes: the table (plain or Markdown), JSON, CSV, a plot, and the Markdown page
of a results file with the machine and the command above the table.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from typing import Any, Optional, Sequence

from .case import BenchError, Result


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: Sequence[Result], markdown: bool = False) -> str:
    """A readable table: one row per case, mode and implementation."""
    head = ["case", "mode", "impl", "median ms", "min-max ms", "vs torch", "GFLOP/s",
            "of matmul", "peak MB", "status"]
    rows = []
    for r in results:
        spread = ("-" if r.min_ms is None else f"{r.min_ms:.3g}-{r.max_ms:.3g}")
        status = r.status if r.status == "ok" else f"{r.status}: {r.detail}"
        if r.cuda_path:
            status += f" ({r.cuda_path})"
        rows.append([r.case, r.mode, r.impl, _fmt(r.median_ms, ".4g"), spread,
                     "-" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.2f}x",
                     _fmt(r.gflops, ".1f"),
                     "-" if r.fraction_of_matmul is None else f"{100 * r.fraction_of_matmul:.0f}%",
                     _fmt(r.peak_mem_mb, ".1f"), status])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def write_json(path: str, results: Sequence[Result], meta: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": [asdict(r) for r in results]}, f, indent=1)
        f.write("\n")


CSV_FIELDS = ["case", "cell", "mode", "impl", "status", "median_ms", "min_ms", "max_ms", "q1_ms",
              "q3_ms", "samples", "calls_per_sample", "speedup_vs_torch", "gflops",
              "fraction_of_matmul", "peak_mem_mb", "device", "threads", "cuda_path", "detail"]


def write_csv(path: str, results: Sequence[Result]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(asdict(r))


def write_plot(path: str, results: Sequence[Result]) -> None:
    """Bars (median ms per implementation and mode) for one case; lines (ms against hidden size,
    one per implementation, a panel per mode and batch size) for several."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise BenchError("--plot needs matplotlib: pip install matplotlib (or rnnkit[plot])") \
            from error
    timed = [r for r in results if r.median_ms is not None]
    cases = list(dict.fromkeys(r.case for r in timed))
    modes = list(dict.fromkeys(r.mode for r in timed))
    impls = list(dict.fromkeys(r.impl for r in timed))
    if len(cases) <= 1:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(modes))
        for k, mode in enumerate(modes):
            ys = [next((r.median_ms for r in timed if r.impl == i and r.mode == mode), 0)
                  for i in impls]
            ax.bar([x + k * width for x in range(len(impls))], ys, width, label=mode)
        ax.set_xticks([x + width * (len(modes) - 1) / 2 for x in range(len(impls))], impls,
                      rotation=30, ha="right")
        ax.set_ylabel("median ms per call")
        ax.set_title(cases[0] if cases else "no timed results")
        ax.legend()
    else:
        batches = sorted({r.shape.get("batch") for r in timed})
        fig, axes = plt.subplots(len(modes), len(batches), squeeze=False,
                                 figsize=(4 * len(batches), 3.5 * len(modes)))
        for a, mode in enumerate(modes):
            for b, n in enumerate(batches):
                ax = axes[a][b]
                for impl in impls:
                    pts = sorted((r.shape["hidden_size"], r.median_ms) for r in timed
                                 if r.impl == impl and r.mode == mode and r.shape.get("batch") == n)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=impl)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("hidden size")
                ax.set_ylabel("median ms")
                ax.set_title(f"{mode}, N={n}")
        axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def header(meta: dict[str, Any]) -> str:
    """The lines above a table: what machine, what software, how busy."""
    where = meta.get("gpu") or meta["cpu"]
    load = meta.get("loadavg_1_5_15")
    s = (f"# {meta['device']}: {where}, {meta['threads']} threads of {meta['cpu_count']} cores; "
         f"torch {meta['torch']}, rnnkit {meta['rnnkit']}, python {meta['python']}")
    if load:
        s += f"; load average {load[0]:.2f}"
    return s


def markdown_report(title: str, results: Sequence[Result], meta: dict[str, Any],
                    notes: Sequence[str] = ()) -> str:
    """A Markdown page: the machine, the versions and the command above the table."""
    lines = [f"# {title}", "", f"- command: `{meta.get('command', '?')}`",
             f"- date (UTC): {meta['date_utc']}",
             f"- machine: {meta.get('gpu') or meta['cpu']}, {meta['cpu_count']} cores, "
             f"{meta['threads']} torch threads, device {meta['device']}",
             f"- versions: torch {meta['torch']}, rnnkit {meta['rnnkit']}, python {meta['python']}"
             + (f", CUDA {meta['cuda']}, cuDNN {meta['cudnn']}" if meta.get("cuda") else ""),
             ]
    if meta.get("loadavg_1_5_15"):
        lines.append("- load average at start (1, 5, 15 min): "
                     + ", ".join(f"{x:.2f}" for x in meta["loadavg_1_5_15"]))
    if meta.get("loadavg_end"):
        lines.append("- load average at end: " + ", ".join(f"{x:.2f}" for x in meta["loadavg_end"]))
    lines += [f"- {n}" for n in notes]
    lines += ["", "Medians of interleaved repeats; `vs torch` is torch's median / this one's; "
              "GFLOP/s counts the layer's matrix products only; `of matmul` is that rate over the "
              "rate of the same products done alone with torch.mm in the same run (the `matmul` "
              "rows); peak MB is resident-set growth (CPU) or max allocated (GPU) over one call.",
              "", table(results, markdown=True), ""]
    return "\n".join(lines)


def results_dir() -> str:
    """benchmarks/results/ of the source tree this module is in (created if missing): this file
    is rnnkit/bench/report.py, three levels below the tree's root."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "benchmarks", "results")
    os.makedirs(path, exist_ok=True)
    return path
