"""rnnkit check in bfloat16: every operator within twice the reference's own bfloat16 error of
float64 (plus a floor), for values and gradients; and the rule catches a wrong result."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rnnkit import check as C

CASES = C.cases("cpu", torch.bfloat16, seed=0)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_bfloat16_operators_keep_the_rule(index):
    case = C.cases("cpu", torch.bfloat16, seed=3000 + index)[index]
    result = C.run_case(case, gradcheck=False, opcheck=True)
    assert result.ok, f"{case.name} ({case.label}): {result.detail}"


def _in_float32(theirs):
    """The reference computed in float32 from the bfloat16 inputs, rounded back: a result as
    accurate as a kernel that accumulates in float32."""
    def run(*args):
        up = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args]
        return tuple(o.to(torch.bfloat16) for o in theirs(*up))
    return run


@pytest.mark.parametrize("index", range(len(CASES)))
def test_the_rule_passes_float32_accumulation_and_catches_an_offset(index):
    case = C.cases("cpu", torch.bfloat16, seed=4000 + index)[index]
    good = C.run_case(dataclasses.replace(case, ours=_in_float32(case.theirs)), opcheck=False)
    assert good.ok, good.detail
    wrong = dataclasses.replace(case, ours=lambda *a: tuple(
        o + 0.1 * (1 + o.detach().abs().max()) for o in case.theirs(*a)))
    bad = C.run_case(wrong, opcheck=False)
    assert not bad.ok and bad.detail.startswith("output 0: error"), bad.detail


def test_a_wrong_gradient_is_caught():
    case = CASES[0]

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.2 * g

    wrong = dataclasses.replace(case, ours=lambda *a: tuple(
        Scaled.apply(o) for o in _in_float32(case.theirs)(*a)))
    bad = C.run_case(wrong, opcheck=False)
    assert not bad.ok and bad.detail.startswith("gradient"), bad.detail
