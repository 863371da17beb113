"""The lessons (docs/lessons.md): gradflow.py (rnnkit gradflow), longrange.py (rnnkit
longrange), inspect_gates.py (rnnkit inspect: an LSTM's gates on a text). They use rnnkit.train.

This file imports nothing.
"""
