"""Every operator against the reference in float64: values, gradients, gradcheck, opcheck."""

import pytest
import torch

from rnnkit import check as C

from ..conftest import ALL_DEVICES


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("index", range(len(C.cases("cpu", seed=0))))
def test_operator_matches_reference(device, index):
    case = C.cases(device, torch.float64, seed=1000 + index)[index]
    result = C.run_case(case)
    assert result.ok, f"{case.name} ({case.label}) on {device}: {result.detail}"


def test_check_reports_a_wrong_kernel():
    """The checker itself must fail when the operator and the reference disagree."""
    case = C.cases("cpu", seed=0)[0]
    ours = case.ours
    case.ours = lambda *a: tuple(t * 1.0001 for t in ours(*a))
    result = C.run_case(case, gradcheck=False, opcheck=False)
    assert not result.ok and "differs from the reference" in result.detail


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("index", range(len(C.cases("cpu", seed=0))))
def test_gradients_of_each_output_alone(device, index):
    """A loss on one output: the other outputs' gradients reach the backward operator as None
    (not as zeros), and the gradients must still equal the reference's."""
    case = C.cases(device, torch.float64, seed=2000 + index)[index]
    tensors = [a for a in case.args if isinstance(a, torch.Tensor) and a.requires_grad]
    ours, theirs = case.ours(*case.args), case.theirs(*case.args)
    for k in range(len(ours)):
        seed = torch.randn_like(ours[k])
        g_ours = torch.autograd.grad(ours[k], tensors, seed, retain_graph=True, allow_unused=True)
        g_theirs = torch.autograd.grad(theirs[k], tensors, seed, retain_graph=True,
                                       allow_unused=True)
        for j, (a, b, t) in enumerate(zip(g_ours, g_theirs, tensors)):
            torch.testing.assert_close(
                a if a is not None else torch.zeros_like(t),
                b if b is not None else torch.zeros_like(t), rtol=1e-10, atol=1e-10,
                msg=lambda m: f"{case.name} ({case.label}), loss on output {k}, input {j}: {m}")


def test_workspaces_are_not_differentiable():
    checked = set()
    for case in C.cases("cpu", torch.float64, seed=3):
        if case.name in ("lstm", "gru", "lstm_cell", "gru_cell"):
            *outputs, workspace = getattr(torch.ops.rnnkit, case.name)(*case.args)
            assert outputs[0].requires_grad and not workspace.requires_grad, case.name
            checked.add(case.name)
    assert checked == {"lstm", "gru", "lstm_cell", "gru_cell"}
