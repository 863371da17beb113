"""rnnkit bench --dtype bfloat16: rnnkit's bfloat16 kernels beside torch.nn's bfloat16 module (the
torch row), both under torch.autocast (float32 modules), and the limit row of bfloat16 matrix
products of the layer's shapes. Never speed."""

import json

import pytest
import torch
from click.testing import CliRunner

from rnnkit.bench import flops
from rnnkit.bench.case import AUTOCAST_IMPLS, MATMUL, MODES, Case, Settings
from rnnkit.bench.run import run_case
from rnnkit.cells import CELLS
from rnnkit.cli import main

TINY = {"seq_len": 4, "batch": 3, "input_size": 5, "hidden_size": 6}
QUICK = Settings(warmup=1, repeats=2, min_sample_s=0.0, memory=False)
LOW = ["rnnkit", "torch", *AUTOCAST_IMPLS]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [{}, {"num_layers": 2, "bidirectional": True, "min_len": 2}],
                         ids=["plain", "2-layer-bidir-packed"])
def test_bfloat16_impls_pass_the_check(cell, shape):
    results = run_case(Case(cell, **TINY, **shape, dtype="bfloat16"), QUICK, LOW)
    for r in results:
        assert r.status == "ok", (r.impl, r.mode, r.detail)
    assert {(r.mode, r.impl) for r in results} == {(m, i) for m in MODES for i in LOW + [MATMUL]}


def test_autocast_peers_check_their_gradients(monkeypatch):
    """A torch.autocast peer whose float32 weights got wrong gradients is caught: the check reads
    them (handed to the bfloat16 module's parameters) as every implementation's."""
    from rnnkit.bench import impls

    def scaled(weight, param):  # the hand-over, made wrong
        param.grad = (1.5 * weight.grad).to(param.dtype)
        weight.grad = None

    results = {r.mode: r for r in run_case(Case("gru", **TINY, dtype="bfloat16"), QUICK,
                                           ["torch-autocast"]) if r.impl == "torch-autocast"}
    assert results["training"].status == "ok", results["training"].detail
    monkeypatch.setattr(impls, "_hand_over", scaled)
    results = {r.mode: r for r in run_case(Case("gru", **TINY, dtype="bfloat16"), QUICK,
                                           ["torch-autocast"]) if r.impl == "torch-autocast"}
    assert results["training"].status == "wrong" and "grad" in results["training"].detail


def test_autocast_peers_are_skipped_in_float32():
    results = run_case(Case("lstm", **TINY), QUICK, ["torch", *AUTOCAST_IMPLS])
    for r in results:
        if r.impl in AUTOCAST_IMPLS:
            assert r.status == "skipped" and "bfloat16" in r.detail and r.median_ms is None


def test_the_limit_row_multiplies_in_the_case_dtype(monkeypatch):
    """matmul, the limit row, runs the layer's products with torch.mm in bfloat16."""
    seen = []
    real = torch.mm

    def mm(a, b, out=None):
        seen.append((a.dtype, b.dtype, tuple(a.shape), tuple(b.shape)))
        return real(a, b, out=out)

    case = Case("lstm", **TINY, dtype="bfloat16")
    run = flops.matmul_runner(case, "inference")
    monkeypatch.setattr(torch, "mm", mm)
    run()
    want = [(m, k) for m, k, n, c in flops.layer_products(case, "inference") for _ in range(c)]
    assert [s[2] for s in seen] == want
    assert {s[:2] for s in seen} == {(torch.bfloat16, torch.bfloat16)}


def test_cli_bench_dtype_bfloat16(tmp_path):
    """The default implementations in bfloat16 add the autocast peers; every row checks out."""
    j = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["bench", "-T", "3", "-N", "2", "-H", "4", "--repeats", "2",
                                  "--warmup", "1", "--dtype", "bfloat16", "--mode", "training",
                                  "--impl", ",".join(LOW), "--json", str(j)])
    assert r.exit_code == 0, r.output
    assert "bfloat16" in r.output and "torch-autocast" in r.output
    data = json.loads(j.read_text())
    rows = {x["impl"]: x for x in data["results"]}
    assert set(rows) == set(LOW) | {MATMUL}
    assert all(x["status"] == "ok" and x["shape"]["dtype"] == "bfloat16" for x in rows.values())
    assert rows[MATMUL]["fraction_of_matmul"] == pytest.approx(1.0)


def test_default_impls_add_the_autocast_peers_for_bfloat16_only():
    from rnnkit.bench.run import default_impls

    assert set(AUTOCAST_IMPLS) <= set(default_impls("cpu", dtype="bfloat16"))
    assert not set(AUTOCAST_IMPLS) & set(default_impls("cpu", dtype="float32"))
    assert default_impls("cpu", ["torch"], dtype="bfloat16") == ["torch"]
