"""rnnkit through PyTorch's own module checks: the entries of torch's ``module_db``
(torch.testing._internal.common_modules) for every torch.nn module rnnkit replaces.

torch's data is read live from the installed torch, never copied, so entries a future torch adds
are picked up. For each pair in ``rnnkit.nn._PAIRS`` (the one list of what rnnkit replaces):
- every error input: rnnkit raises the exception type torch.nn raises, with a message matching
  torch's pattern (torch.nn is run too, so a changed entry cannot pass on a misreading);
- every sample input: outputs, and gradients of the inputs and every parameter, equal torch.nn's
  on the same weights in float64;
- every sample input's second derivatives (double backward) against torch.nn's.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db

import rnnkit.nn

from ..conftest import ALL_DEVICES
from ..helpers import assert_close, tensors_of

#: torch.nn class -> rnnkit class, for everything rnnkit offers as a drop-in.
PAIRS = {theirs: ours for ours, theirs in rnnkit.nn._PAIRS}
INFOS = [info for info in module_db if info.module_cls in PAIRS]
DTYPE = torch.float64


def _name(info) -> str:
    return info.module_cls.__name__


def _error_inputs(info, device: str, dtype: torch.dtype) -> list:
    return list(info.module_error_inputs_func(info, device=device, dtype=dtype,
                                              requires_grad=False, training=True))


def _samples(info, device: str, training: bool) -> list:
    return list(info.module_inputs_func(info, device=device, dtype=DTYPE, requires_grad=True,
                                        training=training))


# Cases are counted on the CPU at collection and rebuilt on the test's device when run.
ERROR_CASES = [pytest.param(info, k, id=f"{_name(info)}-{k}")
               for info in INFOS if info.module_error_inputs_func is not None
               for k in range(len(_error_inputs(info, "cpu", torch.float32)))]
SAMPLE_CASES = [pytest.param(info, k, id=f"{_name(info)}-{k}")
                for info in INFOS for k in range(len(_samples(info, "cpu", True)))]


def test_module_db_covers_every_drop_in():
    """Every module rnnkit replaces has entries in torch's module_db, with samples and error
    inputs, so the walks below check all of them."""
    covered = {info.module_cls for info in INFOS}
    assert covered == set(PAIRS), f"not in module_db: {set(PAIRS) - covered}"
    for info in INFOS:
        assert _samples(info, "cpu", True), f"{_name(info)}: no sample inputs"
        assert info.module_error_inputs_func is not None, f"{_name(info)}: no error inputs"


def _raised(call) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("info,index", ERROR_CASES)
def test_error_input(info, index, dtype, device):
    """rnnkit raises torch.nn's exception type with a message matching torch's pattern."""
    entry = _error_inputs(info, device, dtype)[index]
    module_input = entry.module_error_input
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    if entry.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        def run(cls):
            return lambda: cls(*args, **kwargs)
    else:
        assert entry.error_on == ModuleErrorEnum.FORWARD_ERROR, entry.error_on
        fw_args, fw_kwargs = module_input.forward_input.args, module_input.forward_input.kwargs

        def run(cls):
            module = cls(*args, **kwargs)
            return lambda: module(*fw_args, **fw_kwargs)

    theirs = _raised(run(info.module_cls))
    assert type(theirs) is entry.error_type and re.search(entry.error_regex, str(theirs)), (
        f"torch.nn itself no longer gives {entry.error_type.__name__} /{entry.error_regex}/: "
        f"{type(theirs).__name__}: {theirs}")
    ours = _raised(run(PAIRS[info.module_cls]))
    assert type(ours) is type(theirs), (
        f"expected {type(theirs).__name__} as torch.nn raises, got {type(ours).__name__}: {ours}")
    assert re.search(entry.error_regex, str(ours)), (
        f"message does not match torch's /{entry.error_regex}/: {ours}")


def _twins(info, sample, device: str, training: bool):
    """torch.nn's module for the sample's constructor arguments, in float64, and rnnkit's built
    from the same arguments with torch.nn's state_dict loaded."""
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    torch.manual_seed(0)
    theirs = info.module_cls(*args, **kwargs).to(device=device, dtype=DTYPE).train(training)
    ours = PAIRS[info.module_cls](*args, **kwargs).to(device=device, dtype=DTYPE).train(training)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _without_cudnn():
    """torch.nn's side on CUDA runs without cuDNN, which refuses backward in eval mode and any
    double backward: ATen's own RNN path is the oracle there, as on the CPU."""
    return torch.backends.cudnn.flags(enabled=False)


def _forward(module, sample):
    return tensors_of(module(*sample.forward_input.args, **sample.forward_input.kwargs))


def _leaves(module, sample) -> list[torch.Tensor]:
    """The sample's input tensors that require grad, then the module's parameters."""
    inputs = [t for t in tensors_of(list(sample.forward_input.args)) if t.requires_grad]
    return inputs + list(module.parameters())


def _grads(outputs, leaves, seeds, create_graph=False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(outputs, leaves, seeds, allow_unused=True,
                                create_graph=create_graph)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


def _leaf_names(module, sample) -> list[str]:
    count = len(_leaves(module, sample)) - len(list(module.parameters()))
    return [f"input {k}" for k in range(count)] + [n for n, _ in module.named_parameters()]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info,index", SAMPLE_CASES)
def test_sample_input(info, index, training, device):
    """Outputs, and gradients of the inputs and every parameter, equal torch.nn's in float64."""
    sample = _samples(info, device, training)[index]
    theirs, ours = _twins(info, sample, device, training)
    with _without_cudnn():
        out_t = _forward(theirs, sample)
    out_o = _forward(ours, sample)
    assert len(out_o) == len(out_t)
    for k, (a, b) in enumerate(zip(out_o, out_t)):
        assert_close(a, b, DTYPE, f"output {k}")
    gen = torch.Generator(device=device).manual_seed(index)
    seeds = [torch.randn(t.shape, generator=gen, dtype=DTYPE, device=device) for t in out_t]
    g_t = _grads(out_t, _leaves(theirs, sample), seeds)
    g_o = _grads(out_o, _leaves(ours, sample), seeds)
    for name, a, b in zip(_leaf_names(theirs, sample), g_o, g_t):
        assert_close(a, b, DTYPE, f"gradient of {name}")


def _second_derivatives(module, sample, seeds, directions) -> list[torch.Tensor]:
    """d/d(leaves) of sum(first derivatives * directions): a Hessian-vector product through the
    module's backward."""
    leaves = _leaves(module, sample)
    first = _grads(_forward(module, sample), leaves, seeds, create_graph=True)
    total = sum((g * d).sum() for g, d in zip(first, directions))
    return _grads([total], leaves, None)


# The backward operators have no autograd kernel of their own: under create_graph, ops.py hands
# the first gradient to rnnkit.double_backward. torch's warning that it backpropagates through an
# operator as if it were a constant is made an error, so that a path that skips the hand-over fails.
@pytest.mark.filterwarnings("error:.*an autograd kernel was not registered:UserWarning")
@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("info,index", SAMPLE_CASES)
def test_sample_input_second_derivatives(info, index, device):
    """Second derivatives of every sample (inputs and parameters) equal torch.nn's in float64."""
    sample = _samples(info, device, True)[index]
    theirs, ours = _twins(info, sample, device, True)
    gen = torch.Generator(device=device).manual_seed(index)
    with _without_cudnn():
        out_t = _forward(theirs, sample)
        seeds = [torch.randn(t.shape, generator=gen, dtype=DTYPE, device=device) for t in out_t]
        directions = [torch.randn(t.shape, generator=gen, dtype=DTYPE, device=device)
                      for t in _leaves(theirs, sample)]
        h_t = _second_derivatives(theirs, sample, seeds, directions)
    h_o = _second_derivatives(ours, sample, seeds, directions)
    for name, a, b in zip(_leaf_names(theirs, sample), h_o, h_t):
        assert_close(a, b, DTYPE, f"second derivative of {name}")
