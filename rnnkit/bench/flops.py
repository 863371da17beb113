"""The matrix products of a layer and their FLOPs: what ``matmul`` (the machine's rate for the same
products, done alone with torch.mm) runs, and what achieved GFLOP/s counts.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..cells import GATES
from .case import Case
from .machine import DTYPES


def layer_products(case: Case, mode: str) -> list[tuple[int, int, int, int]]:
    """The matrix products (M, K, N, count) that one call makes: (M, K) @ (K, N), count times.

    Per layer and direction: the input projection of the whole sequence, (rows, I_l) @ (I_l, GH),
    and one recurrent product per step, (n_t, H) @ (H, GH). Training adds, for each product,
    the gradient of each operand: (M, N) @ (N, K) and (K, M) @ (M, N).
    """
    G, H = GATES[case.cell], case.hidden_size
    steps = case.batch_sizes()
    rows = sum(steps)
    fwd: list[tuple[int, int, int, int]] = []
    for layer in range(case.num_layers):
        width = case.input_size if layer == 0 else case.directions * H
        for _ in range(case.directions):
            fwd.append((rows, width, G * H, 1))
            counts: dict[int, int] = {}
            for n in steps:
                counts[n] = counts.get(n, 0) + 1
            fwd += [(n, H, G * H, c) for n, c in counts.items() if n > 0]
    if mode == "inference":
        return fwd
    out = list(fwd)
    for m, k, n, c in fwd:
        out.append((m, n, k, c))  # d(input) = d(out) @ W
        out.append((k, m, n, c))  # d(W) = input^T @ d(out), accumulated over steps
    return out


def layer_flops(case: Case, mode: str) -> int:
    """Matrix-product FLOPs of one call (2 M K N per product; pointwise work not counted)."""
    return sum(2 * m * k * n * c for m, k, n, c in layer_products(case, mode))


def matmul_runner(case: Case, mode: str) -> Callable[[], None]:
    """A callable that does exactly the layer's matrix products with torch.mm."""
    dev, dt = case.device, DTYPES[case.dtype]
    gen = torch.Generator(device="cpu").manual_seed(1)
    work = []
    for m, k, n, c in layer_products(case, mode):
        a = torch.randn(m, k, generator=gen).to(dev, dt)
        b = torch.randn(n, k, generator=gen).to(dev, dt).t()  # weights are stored (out, in)
        out = torch.empty(m, n, device=dev, dtype=dt)
        work.append((a, b, out, c))

    def run() -> None:
        for a, b, out, c in work:
            for _ in range(c):
                torch.mm(a, b, out=out)

    return run
