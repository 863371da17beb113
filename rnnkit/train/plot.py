"""``rnnkit plot``: training and validation loss curves of run folders, to a PNG."""

from __future__ import annotations

import os
from typing import Optional

from . import checkpoint as C
from .errors import UserError


def matplotlib_missing() -> Optional[str]:
    """None when matplotlib can be imported, else a one-line reason and how to install it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return f"matplotlib is not installed ({e}); pip install matplotlib"
    return None


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Writes a matplotlib figure to path atomically (a temporary file, then a rename) and closes
    it; a path that cannot be written is a UserError."""
    import matplotlib.pyplot as plt

    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        plt.close(fig)


def plot_runs(run_dirs: list[str], out: Optional[str] = None) -> str:
    """Draw the train and valid losses of each run against the step; return the PNG's path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("rnnkit plot needs matplotlib: pip install matplotlib "
                        "(or pip install 'rnnkit[plot]')") from None
    runs = [(d, C.read_metrics(d)) for d in run_dirs]
    for d, records in runs:
        if not records:
            raise UserError(f"{d}: metrics.jsonl holds no records yet")
    if out is None:
        out = (os.path.join(run_dirs[0], "curves.png") if len(run_dirs) == 1 else "curves.png")
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (d, records) in enumerate(runs):
        color = f"C{i % 10}"
        name = os.path.basename(os.path.normpath(d))
        for split, style in (("train", "-"), ("valid", "o-")):
            pts = [(r["step"], r["loss"]) for r in records if r.get("split") == split
                   and isinstance(r.get("loss"), (int, float))]  # hand-edited records: skipped
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color=color, alpha=0.45 if split == "train" else 1.0,
                        markersize=3, label=f"{name} {split}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    return out
