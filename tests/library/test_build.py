"""build_info, the import guard, and the info / check commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main
from rnnkit.hardware import cpu_bf16_features


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_build_info_fields():
    info = rnnkit.build_info()
    import torch

    assert info["version"] == rnnkit.__version__
    assert info["torch_version"] == torch.__version__
    assert info["backends"][0] == "cpu"
    assert info["cpu_capability"] in ("default", "avx2", "avx512")
    assert info["threads"] == torch.get_num_threads()
    assert ("cuda" in info["backends"]) == bool(info["cuda_archs"])


def test_import_guard_names_a_missing_library():
    r = _python("import sys; sys.modules['rnnkit._C'] = None\n"
                "import rnnkit; rnnkit.LSTM")
    assert r.returncode != 0
    assert "rnnkit's compiled kernels (rnnkit._C) could not be loaded" in r.stderr
    assert "pip install --no-build-isolation -e ." in r.stderr


def test_import_guard_names_a_torch_mismatch():
    r = _python("import torch; import rnnkit._C as C; C.torch_version = '1.0.0'\n"
                "import rnnkit; rnnkit.LSTM")
    assert r.returncode != 0
    assert "built against torch 1.0.0, but torch" in r.stderr
    assert "rebuild with: pip install --no-build-isolation -e ." in r.stderr


def test_help_does_not_import_torch():
    r = _python("import sys; from rnnkit.cli import main\n"
                "try: main(['--help'])\nexcept SystemExit: pass\n"
                "print('torch' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip().endswith("False"), r.stdout + r.stderr


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.strip() == f"rnnkit, version {rnnkit.__version__}"
    result = runner.invoke(main, ["-h"])
    assert result.exit_code == 0 and "info" in result.output and "check" in result.output


def test_info_table_and_json():
    runner = CliRunner()
    table = runner.invoke(main, ["info"])
    assert table.exit_code == 0 and "cpu_capability" in table.output
    data = json.loads(runner.invoke(main, ["info", "--json"]).output)
    assert data["version"] == rnnkit.__version__
    # the CPU's bfloat16 features, each present or not, and the CPU kernels' bfloat16 products
    features = cpu_bf16_features()
    assert data["cpu_bf16_features"] == features
    assert set(features) == {"amx_bf16", "amx_int8", "avx512_bf16", "avx512_fp16"}
    row = next(ln for ln in table.output.splitlines() if ln.startswith("cpu_bf16_features"))
    for name, present in features.items():
        assert f"{name} {({True: 'yes', False: 'no', None: 'unknown'})[present]}" in row
    assert data["cpu_bf16_path"] == rnnkit.build_info().get("cpu_bf16_path", "not built")
    assert "cpu_bf16_path" in table.output and data["cpu_bf16_path"] in table.output


def test_check_passes_and_prints_one_line_per_case():
    result = CliRunner().invoke(main, ["check", "--device", "cpu", "--seed", "3", "--no-gradcheck"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith(("ok", "FAIL"))]
    assert len(lines) == sum(len(rnnkit.check.cases("cpu", dt, seed=3))
                             for dt in rnnkit.check.DTYPES)
    assert {ln.split()[3] for ln in lines} == {"float64", "bfloat16"}
    assert all(ln.startswith("ok") for ln in lines)
    assert "all checks passed" in result.output


def test_check_cuda_without_gpu_is_a_one_line_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = CliRunner().invoke(main, ["check", "--device", "cuda"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot check cuda:")
    assert "Traceback" not in result.output
