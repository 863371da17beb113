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
from .common import CONTEXT


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="rnnkit")
def main() -> None:
    """Fused LSTM, GRU and RNN layers for PyTorch: train, evaluate, sample, measure, verify."""


for command in (library.info, library.check, bench.bench, train.train, train.eval_,
                train.generate, train.plot, export.export, lessons.gradflow, lessons.longrange,
                lessons.inspect_):
    main.add_command(command)
