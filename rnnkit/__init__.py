"""rnnkit: fused LSTM, GRU and Elman RNN kernels for PyTorch, drop-in for torch.nn.

    import rnnkit
    lstm = rnnkit.LSTM(128, 256, num_layers=2)       # as torch.nn.LSTM
    out, (h, c) = lstm(x)

See README.md for the command line (rnnkit train / eval / generate / bench / check / info).
"""

__version__ = "0.1.0"

from . import functional, ops, reference  # noqa: E402,F401
from ._library import build_info  # noqa: E402
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, from_torch  # noqa: E402

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "from_torch", "build_info",
           "functional", "reference", "ops", "__version__"]
