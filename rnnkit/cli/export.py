"""rnnkit export: a trained run's model as an ONNX file or a torch.export program. The logic
lives in rnnkit.train.deploy; torch is imported inside the command, so --help needs none.
"""

from __future__ import annotations

import click

from ..train.config import EXPORT_FORMATS
from .common import RUN, user_errors


@click.command()
@click.argument("run_dir", type=RUN)
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="onnx",
              help="onnx: standard ONNX operators, runs in onnxruntime without rnnkit or torch "
                   "(needs the export extra: pip install \"rnnkit[export]\"). pt2: "
                   "torch.export.save's program; loading it needs the same torch version and "
                   "rnnkit installed, with `import rnnkit.ops` before torch.export.load.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="File to write [default: RUN_DIR/model.onnx or RUN_DIR/model.pt2].")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              help="Which checkpoint of the run.")
def export(run_dir: str, fmt: str, out: str | None, checkpoint: str) -> None:
    """Export a run's model for deployment, float32, batch and length free.

    \b
    charlm:   the step model: tokens (N,) int64, h (L, N, H) [and c for LSTM]
              -> logits (N, V), h_n [, c_n]; start from zero states, feed each
              sampled token back (rnnkit generate RUN_DIR --onnx FILE does).
    classify: tokens (T, N) int64 padded, lengths (N,) int64 -> logits (N, C)
    tag:      tokens (T, N) int64 padded, lengths (N,) int64 -> logits (T, N, C)
    adding:   features (T, N, 2) -> prediction (N, 1)
    copy:     tokens (T, N) int64 -> logits (T, N, 9)
    seq2seq runs do not export. Symbol indices are those of RUN_DIR/vocab.json.
    """
    with user_errors():
        from ..train.runs import export_run

        path = export_run(run_dir, fmt, out, checkpoint)
    click.echo(f"wrote {path}")

