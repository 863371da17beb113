"""Helpers shared by the parity tests: build a torch.nn module and rnnkit's twin, run both."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit

TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def twins(kind: str, *args, dtype=torch.float64, seed=0, **kwargs):
    """A torch.nn module of the given kind ("LSTM", "GRU", "RNN", "LSTMCell", ...) and its rnnkit
    conversion, with the same random weights."""
    torch.manual_seed(seed)
    theirs = getattr(torch.nn, kind)(*args, **kwargs).to(dtype)
    ours = rnnkit.from_torch(theirs)
    assert type(ours) is getattr(rnnkit, kind)
    return theirs, ours


def tensors_of(result):
    """The tensors of a module's result, flattened (PackedSequence -> its data)."""
    if isinstance(result, PackedSequence):
        return [result.data]
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for r in result for t in tensors_of(r)]


def assert_close(a, b, dtype, what):
    tol = TOLERANCE[dtype]
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")


def compare(theirs, ours, inputs, dtype, grads=True):
    """Runs both modules on the same inputs (a list whose tensors may require grad); checks
    outputs, and gradients of every input tensor and parameter for a random output seed."""
    out_t = tensors_of(theirs(*inputs))
    out_o = tensors_of(ours(*inputs))
    assert len(out_t) == len(out_o)
    for k, (a, b) in enumerate(zip(out_o, out_t)):
        assert_close(a, b, dtype, f"output {k}")
    if not grads:
        return
    leaves = [t for t in tensors_of(inputs) if t.requires_grad]
    seeds = [torch.randn_like(t) for t in out_t]
    g_t = torch.autograd.grad(out_t, leaves + list(theirs.parameters()), seeds)
    g_o = torch.autograd.grad(out_o, leaves + list(ours.parameters()), seeds)
    names = [f"input {k}" for k in range(len(leaves))] + [n for n, _ in theirs.named_parameters()]
    for name, a, b in zip(names, g_o, g_t):
        assert_close(a, b, dtype, f"gradient of {name}")


def random_packed(T: int, N: int, features: int, dtype, enforce_sorted: bool, gen=None):
    """A PackedSequence of N sequences of random lengths in 1..T (one of length T), and the padded
    tensor it came from (which requires grad)."""
    lengths = torch.randint(1, T + 1, (N,), generator=gen)
    lengths[torch.randint(0, N, (1,), generator=gen)] = T
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    padded = torch.randn(T, N, features, dtype=dtype, generator=gen).requires_grad_()
    return pack_padded_sequence(padded, lengths, enforce_sorted=enforce_sorted), padded


def one_line_error(result, code=1):
    """The one "Error: ..." line of a failed command (a CliRunner result), after checking the exit
    code and that no traceback reached the user."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.output
    return error[0]


def assert_inference_equals_training(module, x) -> None:
    """module(x) without autograd (inference: no workspace, chunked projection) gives exactly what
    training's forward gives, in x's dtype."""
    with torch.no_grad():
        inference = tensors_of(module(x))
    training = tensors_of(module(x.clone().requires_grad_()))
    for a, b in zip(inference, training, strict=True):
        assert a.dtype == x.dtype
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
