"""rnnkit: fused LSTM, GRU and Elman RNN kernels for PyTorch, drop-in for torch.nn.

    import rnnkit
    lstm = rnnkit.LSTM(128, 256, num_layers=2)       # as torch.nn.LSTM
    out, (h, c) = lstm(x)

See README.md for the command line (rnnkit train / eval / generate / bench / check / info).

The public names load on first use (torch and the compiled kernels are imported then), so
that ``rnnkit --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RNN": "nn", "LSTM": "nn", "GRU": "nn", "RNNCell": "nn", "LSTMCell": "nn", "GRUCell": "nn",
    "from_torch": "nn", "build_info": "_library",
}
_SUBMODULES = {"functional", "reference", "ops", "nn", "check", "onnx", "init"}

__all__ = [*_LAZY, "functional", "reference", "ops", "init", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
