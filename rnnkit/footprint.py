"""Memory a recurrent layer needs, estimated before anything is allocated, and the memory a
device has free: what ``rnnkit bench`` and ``rnnkit train`` / ``eval`` refuse a size with, so
that a size that cannot fit ends in one line instead of an allocator's traceback (or in tens of
GB allocated first).
"""

from __future__ import annotations

from typing import Optional

import torch

from .cells import GATES


def layer_parameters(cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                     directions: int = 1) -> int:
    """Parameters of a stacked recurrent layer (weights and both biases, every direction)."""
    G, H, D = GATES[cell], hidden_size, directions
    # closed form, not a loop over layers: the count is asked for absurd sizes too, to refuse them
    return D * G * H * ((input_size + H + 2) + (num_layers - 1) * (D * H + H + 2))


def layer_values(cell: str, input_size: int, hidden_size: int, num_layers: int, directions: int,
                 rows: int, training: bool) -> int:
    """A rough upper estimate of the values (not bytes) a recurrent layer holds at its peak on
    ``rows`` = time steps x batch: parameters, their gradients and two optimiser moments, the
    input and output (and their gradients), the gate pre-activations of one layer, and in
    training the activations kept for backward by the most hungry implementation (the eager
    reference, about 3G + 6 values of width H per row, step, layer and direction)."""
    G, H, D, L = GATES[cell], hidden_size, directions, num_layers
    values = (4 * layer_parameters(cell, input_size, H, L, D) + rows * (input_size + D * H) * 2
              + G * H * rows)
    if training:
        values += rows * L * D * H * (3 * G + 6)
    return values


def available_bytes(device: torch.device | str) -> Optional[int]:
    """Free memory of ``device``: the GPU's free memory, or the system's MemAvailable on the CPU;
    None where that cannot be read."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fits(need: int, device: torch.device | str) -> tuple[bool, Optional[int]]:
    """(whether ``need`` bytes leave a fifth of the free memory of ``device``, the free bytes)."""
    have = available_bytes(device)
    return have is None or need <= 0.8 * have, have
