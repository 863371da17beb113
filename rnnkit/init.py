"""Initialisations of the gate biases of recurrent modules: a constant forget-gate bias and
chrono initialisation.

They work on rnnkit's layers and cells and on torch.nn's (``torch.nn.LSTM``, ``GRU``,
``LSTMCell``, ``GRUCell``, any module with torch.nn's parameter names): the gate blocks are found
from the bias's length (``GATES * hidden_size`` rows in torch.nn's gate order, LSTM i, f, g, o;
GRU r, z, n). Both write into ``bias_ih`` the value the gate's bias should have and set the same
slice of ``bias_hh`` to zero, since the cell adds the two.

GRU: torch.nn's GRU computes ``h' = (1 - z) * n + z * h``, so its update gate ``z`` is the
fraction of the old state kept: the role of the LSTM's forget gate. ``forget_bias_`` sets ``z``'s
bias, and ``chrono_init_`` follows Tallec & Ollivier (2018), section 4, who derive the gated
update from a leaky unit ``h' = a * new + (1 - a) * h`` and initialise the bias of ``a`` to
``-log U(1, T_max - 1)``; ``z`` is ``1 - a``, so ``z``'s bias is ``+log U(1, T_max - 1)``.
The Elman RNN has no gates: both functions refuse it.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterator

import torch
from torch import Tensor, nn

from .cells import GATES

#: Which gate block plays the forget gate, per gate count (LSTM f; GRU z, torch.nn's order).
_FORGET = {GATES["lstm"]: 1, GATES["gru"]: 1}
#: The LSTM's input gate, which chrono initialisation sets to minus the forget gate's bias.
_LSTM_INPUT = 0


def _bias_pairs(module: nn.Module, what: str) -> Iterator[tuple[Tensor, Tensor, int]]:
    """Yields (bias_ih, bias_hh, gate count) for every layer and direction (or the cell)."""
    hidden = getattr(module, "hidden_size", None)
    params = dict(module.named_parameters(recurse=False))
    names = sorted(n for n in params if n.startswith("bias_ih"))
    if not isinstance(hidden, int) or not names:
        if any(n.startswith("weight_ih") for n in params):
            raise ValueError(f"{what}: the module has no biases (bias=False); expected a module "
                             f"built with bias=True, got {type(module).__name__}")
        raise ValueError(f"{what}: expected a recurrent module with torch.nn's parameter names "
                         f"(bias_ih_l0, bias_hh_l0, ... or bias_ih, bias_hh), got "
                         f"{type(module).__name__}")
    for name in names:
        b_ih, b_hh = params[name], params[name.replace("bias_ih", "bias_hh", 1)]
        gates = b_ih.shape[0] // hidden
        if gates not in _FORGET:
            raise ValueError(f"{what}: only gated cells (LSTM, GRU) have a forget gate; "
                             f"{type(module).__name__} has {gates} gate block(s) per layer")
        yield b_ih, b_hh, gates


def _block(bias: Tensor, index: int, hidden: int) -> Tensor:
    return bias[index * hidden:(index + 1) * hidden]


def check_forget_bias(value: object, what: str = "forget_bias") -> float:
    """The value as a float, or ValueError if it is not a finite real number."""
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(float(value))):
        raise ValueError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def check_t_max(t_max: object, what: str = "chrono_init") -> int:
    """T_max as an int, or ValueError unless it is an integer >= 3 (so that U(1, T_max - 1) is a
    range of more than one point)."""
    if not isinstance(t_max, numbers.Integral) or isinstance(t_max, bool) or t_max < 3:
        raise ValueError(f"{what}: expected T_max, an integer >= 3 (the longest dependency in "
                         f"time steps; biases are drawn from log U(1, T_max - 1)), got {t_max!r}")
    return int(t_max)


@torch.no_grad()
def forget_bias_(module: nn.Module, value: float) -> nn.Module:
    """Sets the forget gate's bias (LSTM f; GRU z, see the module docstring) to ``value`` in every
    layer and direction: that slice of ``bias_ih`` to ``value``, of ``bias_hh`` to 0. In place;
    returns the module. Jozefowicz et al. (2015) recommend 1.0 for the LSTM."""
    value = check_forget_bias(value)
    hidden = module.hidden_size if hasattr(module, "hidden_size") else None
    for b_ih, b_hh, gates in _bias_pairs(module, "forget_bias_"):
        _block(b_ih, _FORGET[gates], hidden).fill_(value)
        _block(b_hh, _FORGET[gates], hidden).zero_()
    return module


@torch.no_grad()
def chrono_init_(module: nn.Module, t_max: int) -> nn.Module:
    """Chrono initialisation (Tallec & Ollivier, 2018) for dependencies up to ``t_max`` steps.

    LSTM: forget-gate bias ``b_f = log(u)``, ``u ~ U(1, T_max - 1)`` drawn per unit, and input-gate
    bias ``b_i = -b_f``. GRU: update-gate bias ``b_z = log(u)`` (z keeps the old state in
    torch.nn's GRU; see the module docstring). In every layer and direction, written to
    ``bias_ih`` with the same slices of ``bias_hh`` zeroed; other biases keep their values.
    Draws from torch's global generator (seed it for reproducible values). In place; returns the
    module.
    """
    t_max = check_t_max(t_max, "chrono_init_")
    hidden = module.hidden_size if hasattr(module, "hidden_size") else None
    for b_ih, b_hh, gates in _bias_pairs(module, "chrono_init_"):
        forget = _block(b_ih, _FORGET[gates], hidden)
        forget.copy_(torch.empty_like(forget).uniform_(1.0, t_max - 1.0).log_())
        _block(b_hh, _FORGET[gates], hidden).zero_()
        if gates == GATES["lstm"]:
            _block(b_ih, _LSTM_INPUT, hidden).copy_(-forget)
            _block(b_hh, _LSTM_INPUT, hidden).zero_()
    return module
