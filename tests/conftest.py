"""Shared test settings: float64 oracles, devices with compiled kernels."""

import pytest
import torch

import rnnkit
from rnnkit.check import devices

DEVICES = ["cpu", "cuda"]


def device_param(device: str):
    """A pytest param for a device that skips, with the reason, where it cannot run."""
    if device == "cuda":
        if "cuda" not in rnnkit.build_info()["backends"]:
            return pytest.param(device, marks=pytest.mark.skip(reason="CUDA kernels not built"))
        if not torch.cuda.is_available():
            return pytest.param(device, marks=pytest.mark.skip(reason="no GPU visible"))
    return pytest.param(device)


ALL_DEVICES = [device_param(d) for d in DEVICES]
assert devices()[0] == "cpu"
