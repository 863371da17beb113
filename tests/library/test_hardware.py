"""rnnkit.hardware: the CPU's bfloat16 features from /proc/cpuinfo (or torch's probes), and
which devices multiply bfloat16 in hardware."""

from __future__ import annotations

import pytest
import torch

from rnnkit import hardware


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: fpu\n")
    return str(path)


@pytest.mark.parametrize("flags,present", [
    ("avx512f avx512_bf16", {"avx512_bf16"}),
    ("amx_tile amx_bf16 amx_int8 avx512_bf16 avx512_fp16",
     {"amx_bf16", "amx_int8", "avx512_bf16", "avx512_fp16"}),
    ("avx2 fma", set()),
])
def test_features_are_read_from_the_first_flags_line(tmp_path, flags, present):
    got = hardware.cpu_bf16_features(_cpuinfo(tmp_path, flags))
    assert got == {name: name in present for name in hardware.CPU_BF16_FEATURES}


def test_without_cpuinfo_torch_probes_answer_or_say_unknown(tmp_path):
    got = hardware.cpu_bf16_features(str(tmp_path / "absent"))
    assert got["avx512_bf16"] == torch.cpu._is_avx512_bf16_supported()
    assert got["amx_bf16"] == torch.cpu._is_amx_tile_supported()
    assert got["amx_int8"] is None and got["avx512_fp16"] is None


@pytest.mark.parametrize("features,fast", [
    ({"amx_bf16": False, "amx_int8": False, "avx512_bf16": True, "avx512_fp16": False}, True),
    ({"amx_bf16": True, "amx_int8": True, "avx512_bf16": False, "avx512_fp16": False}, True),
    ({"amx_bf16": False, "amx_int8": True, "avx512_bf16": False, "avx512_fp16": True}, False),
    ({"amx_bf16": None, "amx_int8": None, "avx512_bf16": None, "avx512_fp16": None}, False),
])
def test_fast_bf16_on_the_cpu_needs_amx_or_avx512_bf16(monkeypatch, features, fast):
    monkeypatch.setattr(hardware, "cpu_bf16_features", lambda path="": features)
    assert hardware.fast_bf16("cpu") is fast


def test_fast_bf16_on_cuda_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for answer in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda answer=answer: answer)
        assert hardware.fast_bf16("cuda") is answer
