"""rnnkit's command line: one Click group; the commands live by what they serve.

    library.py  info, check            the compiled library itself
    bench.py    bench                  timing (the logic is rnnkit.bench)
    train.py    train, eval, generate, plot   models (the logic is rnnkit.train)
    export.py   export                 a run's model as ONNX or .pt2 (rnnkit.train.deploy)
    lessons.py  gradflow, longrange, inspect  the lessons (the logic is rnnkit.lessons)

Options are parsed here and handed to the applications; nothing else imports this package.
torch is imported inside the commands, so ``rnnkit --help`` answers at once.
"""

from __future__ import annotations

import click

from .. import __version__
from . import bench, export, lessons, library, train
from .common import CONTEXT, ctrl_c


class Group(click.Group):
    """Click's group, but Ctrl-C anywhere in a command (importing torch, loading a run,
    evaluating, sampling, timing) exits 130 with one line, not Click's "Aborted!" and 1 (the
    training loop handles its own Ctrl-C: it saves a checkpoint first)."""

    def invoke(self, ctx: click.Context):
        with ctrl_c.watching():
            try:
                result = super().invoke(ctx)
            except KeyboardInterrupt:
                interrupted = True
            else:
                interrupted = ctrl_c.pressed  # swallowed on the way, but pressed all the same
            if interrupted:
                click.echo("\ninterrupted", err=True)
                ctx.exit(130)
            return result


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="rnnkit")
def main() -> None:
    """Fused LSTM, GRU and RNN layers for PyTorch: train, evaluate, sample, measure, verify."""


for command in (library.info, library.check, bench.bench, train.train, train.eval_,
                train.generate, train.plot, export.export, lessons.gradflow, lessons.longrange,
                lessons.inspect_):
    main.add_command(command)
