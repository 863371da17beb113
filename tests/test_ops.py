"""Every operator against the reference in float64: values, gradients, gradcheck, opcheck."""

import pytest
import torch

from rnnkit import check as C

from .conftest import ALL_DEVICES


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
