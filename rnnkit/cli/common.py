"""What the command groups share: UserError as a one-line ClickException, option types built
from TrainConfig's fields, file writing with a one-line note, and the command as typed.

Imports nothing that loads torch, so that ``rnnkit --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import typing

import click
from click.core import ParameterSource

from ..cells import CELLS
from ..train.config import BOUNDS, CHOICES, IMPL_ALIASES, TrainConfig, field_type
from ..train.errors import UserError


CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class AliasChoice(click.Choice):
    """A Choice that also takes older spellings (``aliases``: old -> current) and hands the
    command the current one; --help lists the current names only."""

    def __init__(self, choices, aliases: dict[str, str]) -> None:
        super().__init__(choices)
        self.aliases = aliases

    def convert(self, value, param, ctx):
        return super().convert(self.aliases.get(value, value), param, ctx)


class CtrlC:
    """Ctrl-C during a command: raises KeyboardInterrupt as Python does, and is remembered
    (``pressed``), because code that rnnkit calls may swallow the KeyboardInterrupt (C code that
    clears every pending error, a check that catches everything): the command asks ``pressed``
    at the points where it can stop cleanly, and the group exits 130 if it was ever set."""

    def __init__(self) -> None:
        self.pressed = False

    def _handler(self, signum, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def watching(self):
        self.pressed = False
        try:
            previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: Python's own handling
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


#: The one watcher of the running command (rnnkit.cli.Group installs it).
ctrl_c = CtrlC()


@contextlib.contextmanager
def user_errors():
    """Turn rnnkit's UserError (bad files, options, run folders) into a one-line ClickException."""
    try:
        yield
    except UserError as e:
        raise click.ClickException(str(e)) from None


def default(name: str):
    """The default of a TrainConfig field (config.py is where defaults live)."""
    return getattr(TrainConfig, name)


def choice(name: str) -> click.Choice:
    """The values of a TrainConfig field with a fixed set (config.CHOICES)."""
    if name == "impl":
        return AliasChoice(CHOICES[name], IMPL_ALIASES)
    return click.Choice(CHOICES[name])


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that refuses nan and inf (they pass Click's own range checks, or fail later
    with a traceback); with ``inf_means``, ``inf`` is taken and handed on as that value instead
    (``--grad-clip inf``: no clipping, saved as 0)."""

    def __init__(self, *args, inf_means: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.inf_means = inf_means

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if number == math.inf and self.inf_means is not None:
            return self.inf_means
        if not math.isfinite(number):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return super().convert(number, param, ctx)


#: Seeds: what every seeded generator here takes (torch's take up to 2**64 - 1, but a seed is
#: also mixed with the epoch and the process rank, which must stay in range).
SEED = click.IntRange(0, 2**32 - 1)


def bounded(name: str, inf_means: float | None = None) -> click.ParamType:
    """IntRange or FiniteFloatRange of a numeric TrainConfig field, from config.BOUNDS (the same
    bounds from_json holds a saved config.json to)."""
    low, high, low_open, high_open = BOUNDS[name]
    kind = field_type(typing.get_type_hints(TrainConfig)[name])
    if kind is int:
        return click.IntRange(low, high, min_open=low_open, max_open=high_open)
    return FiniteFloatRange(low, high, min_open=low_open, max_open=high_open, inf_means=inf_means)


IMPLS = choice("impl")
DEVICES = choice("device")
FILE = click.Path(exists=True, dir_okay=False)
RUN = click.Path(exists=True, file_okay=False)


def cell_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in CELLS]
    if bad or not names:
        raise click.BadParameter(f"expected a comma-separated list of {', '.join(CELLS)}, "
                                 f"got {value!r}")
    return names


def png_note(path: str | None, draw) -> None:
    """Draw a PNG with ``draw(path)``, or say in one line why it was skipped."""
    from ..train.plot import matplotlib_missing  # loads torch (checkpoint.py): not for --help

    if path is None:
        return
    reason = matplotlib_missing()
    if reason:
        click.echo(f"PNG skipped ({path}): {reason}")
        return
    draw(path)
    click.echo(f"wrote {path}")


def write_text(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
    click.echo(f"wrote {path}")


def write_json(path: str, data: dict, indent: int | None = 1) -> None:
    write_text(path, json.dumps(data, indent=indent) + "\n")


def command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options that were given (for the results)."""
    words = [ctx.command_path]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value, flag = ctx.params[param.name], param.opts[-1] if param.opts else param.name
        if isinstance(param, click.Option) and param.is_flag:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return " ".join(words)
