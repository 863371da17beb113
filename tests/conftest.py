"""Shared test settings: float64 oracles, devices with compiled kernels."""

import contextlib

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


def pytest_terminal_summary(terminalreporter):
    """The counts of tests/library/test_properties.py (properties tried, bad inputs tried and refused),
    when it ran; also written as JSON to $RNNKIT_FUZZ_REPORT if set."""
    import json
    import os
    import sys

    module = sys.modules.get("tests.library.test_properties")
    if module is None or not module.COUNTS:
        return
    counts = dict(sorted(module.COUNTS.items()))
    terminalreporter.section("rnnkit property and bad-input counts")
    for key, value in counts.items():
        terminalreporter.write_line(f"{key}: {value}")
    if os.environ.get("RNNKIT_FUZZ_REPORT"):
        with open(os.environ["RNNKIT_FUZZ_REPORT"], "w") as f:
            json.dump(counts, f, indent=1)


@contextlib.contextmanager
def _intra_op_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_intra_op_thread():
    """One intra-op thread for the test: the per-step matrix products of small layers are tiny,
    and a team of OpenMP threads per step costs more than it saves on a busy machine (for tests
    whose subject does not depend on the thread count)."""
    with _intra_op_threads(1):
        yield


@pytest.fixture
def intra_op_threads(request):
    """request.param intra-op threads for the test (parametrize it with indirect=True)."""
    with _intra_op_threads(request.param) as count:
        yield count
