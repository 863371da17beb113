"""The benchmark harness (rnnkit.bench, rnnkit bench): that it checks before it times, reports
what it should, writes what it says, and refuses bad requests in one line. Never speed."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from rnnkit.bench.case import BenchError, Case, MATMUL, MODES, Settings
from rnnkit.bench.flops import layer_flops, layer_products
from rnnkit.bench.impls import torch_module
from rnnkit.bench.machine import core_rates, cores_even, validate_impls
from rnnkit.bench.report import CSV_FIELDS
from rnnkit.cells import CELLS
from rnnkit.bench import run as bench_run
from rnnkit.bench.run import run_case
from rnnkit.bench.suites import suite_cases
from rnnkit.bench.timing import interleaved, peak_memory_mb, summarize
from rnnkit.cli import main

TINY = dict(seq_len=4, batch=3, input_size=5, hidden_size=6)
QUICK = Settings(warmup=1, repeats=2, min_sample_s=0.0, memory=False)


def _by_impl(results, mode):
    return {r.impl: r for r in results if r.mode == mode}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [dict(), dict(num_layers=2, bidirectional=True),
                                   dict(min_len=2)], ids=["plain", "2-layer-bidir", "packed"])
def test_every_cpu_impl_passes_the_check(cell, shape):
    impls = ["rnnkit", "torch", "torch-nocudnn", "cell-loop", "reference", "reference-jit"]
    case = Case(cell, **TINY, **shape)
    results = run_case(case, QUICK, impls)
    for mode in MODES:
        got = _by_impl(results, mode)
        for name in impls:
            if name == "torch-nocudnn":
                assert got[name].status == "skipped" and got[name].median_ms is None
                continue
            assert got[name].status == "ok", (name, mode, got[name].detail)
            assert got[name].median_ms > 0 and got[name].samples == 2
        assert got["torch"].speedup_vs_torch == pytest.approx(1.0)
        assert got[MATMUL].fraction_of_matmul == pytest.approx(1.0)
        assert got["rnnkit"].gflops > 0


def test_reference_compile_passes_the_check():
    results = run_case(Case("gru", **TINY), QUICK, ["reference-compile"])
    assert all(r.status == "ok" for r in results), [r.detail for r in results]


def _wrong(module, cell, scale):
    def run(x, states):
        out, hn = module(x, tuple(states) if cell == "lstm" else states[0])
        finals = list(hn) if cell == "lstm" else [hn]
        return out * scale, finals

    return run


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_wrong_impl_is_reported_and_not_timed(cell, monkeypatch):
    case = Case(cell, **TINY)
    module = torch_module(case, QUICK.seed)
    # the planted implementation runs torch.nn on the same weights, then spoils the output by 1%
    monkeypatch.setattr(bench_run, "torch_module", lambda c, s: module)
    results = run_case(case, QUICK, ["torch"], extra={"broken": _wrong(module, cell, 1.01)})
    for mode in MODES:
        got = _by_impl(results, mode)
        assert got["broken"].status == "wrong"
        assert "output" in got["broken"].detail and "bound" in got["broken"].detail
        assert got["broken"].median_ms is None and got["broken"].samples == 0
        assert got["torch"].status == "ok" and got["torch"].median_ms is not None


def test_wrong_gradients_only_are_caught(monkeypatch):
    case = Case("rnn", **TINY)
    module = torch_module(case, QUICK.seed)
    monkeypatch.setattr(bench_run, "torch_module", lambda c, s: module)

    class Scale(torch.autograd.Function):  # right values, gradients doubled
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    def run(x, states):
        out, h = module(x, states[0])
        return Scale.apply(out), [h]

    got = _by_impl(run_case(case, QUICK, ["torch"], extra={"bad-grad": run}), "training")
    assert got["bad-grad"].status == "wrong" and "grad" in got["bad-grad"].detail
    inference = _by_impl(run_case(case, QUICK, ["torch"], extra={"bad-grad": run}), "inference")
    assert inference["bad-grad"].status == "ok"


def test_an_impl_that_raises_is_reported_and_not_timed():
    def run(x, states):
        raise RuntimeError("kaboom\nsecond line")

    results = run_case(Case("gru", **TINY), QUICK, ["torch"], extra={"raises": run})
    for r in results:
        if r.impl == "raises":
            assert r.status == "error" and r.detail == "RuntimeError: kaboom"
            assert r.median_ms is None


def test_interleaved_runs_a_b_c_a_b_c():
    order = []
    fns = {name: (lambda n=name: order.append(n)) for name in "ABC"}
    out = interleaved(fns, warmup=1, repeats=3, min_sample_s=0.0)
    assert order == list("ABC") + list("ABC") * 3
    assert all(len(samples) == 3 and number == 1 for samples, number in out.values())


def test_summarize():
    s = summarize([0.004, 0.001, 0.003, 0.002, 0.005])
    assert s["median_ms"] == pytest.approx(3.0)
    assert (s["min_ms"], s["max_ms"]) == (pytest.approx(1.0), pytest.approx(5.0))
    assert s["q1_ms"] <= s["median_ms"] <= s["q3_ms"]


def test_flops_count_the_layers_matrix_products():
    case = Case("lstm", seq_len=2, batch=3, input_size=4, hidden_size=5)
    fwd = 2 * (2 * 3) * 4 * 20 + 2 * 2 * 3 * 5 * 20  # input projection + one product per step
    assert layer_flops(case, "inference") == fwd
    assert layer_flops(case, "training") == 3 * fwd
    bidir = Case("gru", seq_len=2, batch=3, input_size=4, hidden_size=5, num_layers=2,
                   bidirectional=True)
    layer0 = 2 * 6 * 4 * 15 + 2 * 2 * 3 * 5 * 15
    layer1 = 2 * 6 * 10 * 15 + 2 * 2 * 3 * 5 * 15
    assert layer_flops(bidir, "inference") == 2 * (layer0 + layer1)


def test_packed_lengths_match_torch():
    case = Case("lstm", seq_len=10, batch=5, input_size=2, hidden_size=3, min_len=4)
    lengths = case.lengths()
    assert lengths[0] == 10 and lengths[-1] == 4 and lengths == sorted(lengths, reverse=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.zeros(10, 5, 2), torch.tensor(lengths))
    assert case.batch_sizes() == packed.batch_sizes.tolist()
    assert layer_products(case, "inference")[0][0] == sum(lengths)


def test_peak_memory_sees_an_allocation():
    mb = peak_memory_mb(lambda: torch.ones(16 * 2**20).sum(), "cpu")  # 64 MiB
    if mb is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert mb >= 32


def test_memory_estimate_refuses_before_allocating():
    case = Case("lstm", seq_len=100_000, batch=4096, input_size=4096, hidden_size=4096)
    with pytest.raises(BenchError, match=r"would need about [\d.]+ GiB .* available"):
        run_case(case, QUICK, ["torch"])


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(BenchError, match="valid: rnnkit, torch, torch-nocudnn"):
        validate_impls(["rnnkit", "tf"])
    with pytest.raises(BenchError, match="valid: fastrnns, small-batch, sweep, packed, long"):
        suite_cases("nope", "lstm", "cpu")


# ---- the command line ------------------------------------------------------------------------
def _bench(*args):
    return CliRunner().invoke(main, ["bench", *args])


TINY_ARGS = ["-T", "3", "-N", "2", "-H", "4", "--repeats", "2", "--warmup", "1"]


def test_cli_writes_table_json_and_csv(tmp_path):
    j, c = tmp_path / "r.json", tmp_path / "r.csv"
    r = _bench(*TINY_ARGS, "--cell", "gru", "--impl", "rnnkit,torch", "--impl", "reference",
               "--json", str(j), "--csv", str(c))
    assert r.exit_code == 0, r.output
    assert "vs torch" in r.output and "of matmul" in r.output and "reference" in r.output
    data = json.loads(j.read_text())
    assert {"cpu", "threads", "torch", "rnnkit", "command", "date_utc"} <= set(data["meta"])
    assert "--cell gru" in data["meta"]["command"]
    impls = {(x["mode"], x["impl"]) for x in data["results"]}
    assert impls == {(m, i) for m in MODES for i in ("rnnkit", "torch", "reference", "matmul")}
    for x in data["results"]:
        assert x["status"] == "ok" and x["median_ms"] > 0 and x["shape"]["hidden_size"] == 4
        assert x["device"] == "cpu" and x["threads"] == torch.get_num_threads()
    rows = list(csv.DictReader(c.open()))
    assert list(rows[0]) == CSV_FIELDS and len(rows) == 8
    assert {row["impl"] for row in rows} == {"rnnkit", "torch", "reference", "matmul"}


def test_cli_bad_impl_lists_valid_ones():
    r = _bench("--impl", "rnnkit,fast")
    assert r.exit_code == 2
    assert "unknown implementation 'fast'; valid: rnnkit, torch" in r.output
    assert "Traceback" not in r.output


def test_cli_bad_suite_lists_valid_ones():
    r = _bench("--suite", "huge")
    assert r.exit_code == 2 and "fastrnns" in r.output and "sweep" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cli_cuda_where_there_is_none():
    r = _bench("--device", "cuda")
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith("Error: CUDA was asked for")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cli_long_suite_needs_a_gpu():
    r = _bench("--suite", "long")
    assert r.exit_code == 1 and "GPU only" in r.output


def test_cli_refuses_what_does_not_fit():
    r = _bench("-T", "100000", "-N", "4096", "-H", "4096")
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "would need about" in lines[0] and "GiB" in lines[0]


def test_cli_plot_without_matplotlib_says_so(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    r = _bench(*TINY_ARGS, "--impl", "torch", "--mode", "inference", "--plot",
               str(tmp_path / "p.png"))
    assert r.exit_code == 1 and "needs matplotlib" in r.output


def test_cli_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    r = _bench(*TINY_ARGS, "--impl", "rnnkit,torch", "--plot", str(png))
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cuda_path_is_shown_in_the_table(monkeypatch):
    """rnnkit's CUDA rows say which loop ran (rnnkit._C.persistent_last(), planted here so the
    test runs without a GPU); rows without one say nothing more."""
    from rnnkit import _C
    from rnnkit.bench.case import Result
    from rnnkit.bench.report import table

    monkeypatch.setattr(_C, "persistent_last", lambda: ("persistent", "general: auto (...)"),
                        raising=False)
    assert bench_run.cuda_path("training") == "fwd persistent; bwd general: auto (...)"
    assert bench_run.cuda_path("inference") == "fwd persistent"
    ours = Result("c", "lstm", "training", "rnnkit", "ok",
                  cuda_path=bench_run.cuda_path("training"))
    theirs = Result("c", "lstm", "training", "torch", "ok")
    lines = table([ours, theirs]).splitlines()
    assert lines[2].endswith("ok (fwd persistent; bwd general: auto (...))")
    assert lines[3].endswith("ok")
    monkeypatch.delattr(_C, "persistent_last")
    assert bench_run.cuda_path("training") == ""  # a build without CUDA kernels


def test_results_dir_is_the_trees_benchmarks_results():
    """Benchmark scripts write beside themselves, in <tree>/benchmarks/results, wherever the
    bench package sits inside rnnkit/."""
    from pathlib import Path

    from rnnkit.bench.report import results_dir

    root = Path(__file__).resolve().parents[2]
    assert Path(results_dir()) == root / "benchmarks" / "results"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="the process cannot pin itself")
def test_core_rates_measure_each_core_and_put_the_process_back():
    cpus, threads = os.sched_getaffinity(0), torch.get_num_threads()
    rates = core_rates(torch.float32, seconds=0.01)
    assert set(rates) == cpus
    assert all(rate > 0 for rate in rates.values())
    assert os.sched_getaffinity(0) == cpus
    assert torch.get_num_threads() == threads


def test_cores_even_compares_the_slowest_core_with_the_fastest():
    assert cores_even({0: 600.0, 1: 590.0}) is True
    assert cores_even({0: 600.0, 1: 300.0}) is False
    assert cores_even({0: 600.0, 1: 300.0}, within=0.5) is True
    assert cores_even({}) is None


# ---- benchmarks/ab_builds.py: two builds timed in pairs ---------------------------------------
AB_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "benchmarks", "ab_builds.py")
AB_TINY = ["--cell", "lstm", "--T", "3", "--N", "2", "--H", "8", "--dtype", "float32",
           "--pairs", "3", "--threads", "1"]


def _tree() -> str:
    """The folder that holds the rnnkit package these tests import."""
    import rnnkit
    return os.path.dirname(os.path.dirname(os.path.abspath(rnnkit.__file__)))


def _ab(*args):
    return subprocess.run([sys.executable, AB_SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_ab_builds_times_each_build_it_was_given():
    """Both workers import the rnnkit of the folder they were given (here the same tree twice),
    and the driver reports the paired differences of every pair."""
    tree = _tree()
    done = _ab(tree, tree, *AB_TINY)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    want = os.path.join(tree, "rnnkit", "__init__.py")
    assert lines[0] == f"A: {want}" and lines[1] == f"B: {want}", done.stdout
    assert "lstm training T=3 N=2 H=8 float32, 3 pairs" in done.stdout
    assert lines[-1].startswith("A - B per pair: median ") and lines[-1].endswith(" of 3 pairs")


def test_ab_builds_refuses_a_folder_without_rnnkit(tmp_path):
    """A folder that holds no rnnkit would silently time the installed one: refused instead."""
    tree = _tree()
    done = _ab(str(tmp_path), tree, *AB_TINY)
    assert done.returncode != 0
    assert f"expected rnnkit from {tmp_path}" in done.stderr
    assert f"the worker for {tmp_path} did not start" in done.stderr
