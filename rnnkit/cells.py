"""The cells rnnkit implements: their names and how many gates each has, defined once.

Free of torch (and of everything else), so that the command line can offer the names in
``--help`` without loading torch. rnnkit.reference does not import this: it stands on the
equations alone.
"""

from __future__ import annotations

#: Every cell, in the order the command line and the tables list them.
CELLS = ("lstm", "gru", "rnn")

#: Gate blocks per cell: the rows of W_ih and W_hh are GATES[cell] * hidden_size
#: (LSTM i, f, g, o; GRU r, z, n; the Elman RNN has one).
GATES = {"lstm": 4, "gru": 3, "rnn": 1}

#: torch.nn's mode names (RNNBase.mode) of each cell.
MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}
