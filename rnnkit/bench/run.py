"""Timing helpers shared by ``rnnkit bench`` and the scripts in ``benchmarks/``.

How a benchmark runs (``run_case``):

1. Every implementation is built on the same weights (those of a seeded ``torch.nn`` module).
2. Before any timing, each implementation's outputs (and, in training mode, the gradients of the
   input, the initial states and every parameter) are compared with the plain-PyTorch reference
   computed in float64. The bound is relative to how far the reference itself lands in the
   benchmark dtype:
   ``max|impl - ref64| <= 4 * max|ref_dtype - ref64| + 50 * eps * (1 + max|ref64|)``.
   An implementation that fails the check, or raises, is reported with the reason and not timed.
3. Warm-up calls (these also calibrate how many calls make one sample, and absorb compilation),
   then interleaved repeats A B C A B C ... so that drift in the machine's load hits all alike.
   CPU samples use ``time.perf_counter``; CUDA samples use CUDA events with synchronisation.
4. A pseudo-implementation, ``matmul``, runs exactly the matrix products that the layer does
   (input projection, one recurrent product per step and, in training, the two backward products
   of each) with ``torch.mm``, interleaved with the others: its rate is the machine's
   matrix-multiply rate for these shapes, measured in the same run. Each implementation's
   achieved GFLOP/s counts those same matrix-product FLOPs (pointwise work is not counted), so
   ``fraction = achieved / matmul rate`` says how close it comes to "only the matrix products".
5. Peak memory of one more (untimed) call: growth of the resident set on CPU (the kernel's
   high-water mark, reset through /proc/self/clear_refs after malloc_trim), or
   ``torch.cuda.max_memory_allocated`` growth on GPU.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from .. import _library
from ..cells import CELLS
from .case import (AUTOCAST_DTYPES, AUTOCAST_IMPLS, GPU_ONLY, MATMUL, BenchError, Case, Result,
                   Settings)
from .flops import layer_flops, matmul_runner
from .impls import build_impl, torch_module
from .machine import DTYPES, check_device, check_fits, validate_impls
from .timing import interleaved, peak_memory_mb, summarize
from .verify import check_against_reference, make_inputs, oracle, repeatable_call


def default_impls(device: str, impls: Optional[Sequence[str]] = None,
                  dtype: str = "float32") -> list[str]:
    names = list(impls) if impls is not None else list(Settings().impls)
    if impls is None and device == "cuda":
        names.insert(2, "torch-nocudnn")
    if impls is None and dtype in AUTOCAST_DTYPES:
        names += AUTOCAST_IMPLS
    return names


def run_case(case: Case, settings: Settings, impls: Optional[Sequence[str]] = None,
             log: Callable[[str], None] = lambda s: None,
             extra: Optional[dict[str, Callable[[Tensor, list[Tensor]], Any]]] = None
             ) -> list[Result]:
    """Checks and times every implementation on one case, in each mode. ``extra`` adds
    implementations by name (a call (x, states) -> (output, [final states]) on the torch.nn
    module's parameters), used by tests to plant a wrong one."""
    names = _validated(case, settings, impls)
    dtype = DTYPES[case.dtype]
    module = torch_module(case, settings.seed).to(case.device, dtype)
    inputs = make_inputs(case, dtype, case.device, settings.seed)
    results: list[Result] = []
    for mode in settings.modes:
        log(f"{case.label} [{mode}]")
        results += _run_mode(case, settings, mode, names, module, inputs, log, extra or {})
    return results


def _validated(case: Case, settings: Settings, impls: Optional[Sequence[str]]) -> list[str]:
    """The implementations to run, after refusing (BenchError) a case that cannot run here."""
    check_device(case.device)
    if case.cell not in CELLS:
        raise BenchError(f"unknown cell {case.cell!r}; valid: {', '.join(CELLS)}")
    if case.dtype not in DTYPES:
        raise BenchError(f"unknown dtype {case.dtype!r}; valid: {', '.join(DTYPES)}")
    names = validate_impls(default_impls(case.device, impls, case.dtype))
    check_fits(case, settings.modes, settings.check)
    return names


def _run_mode(case: Case, settings: Settings, mode: str, names: Sequence[str],
              module: torch.nn.Module, inputs, log: Callable[[str], None],
              extra: dict[str, Callable]) -> list[Result]:
    """One mode of run_case: build, check, time and relate every implementation."""
    shape = asdict(case)
    results: dict[str, Result] = {}
    candidates: list[tuple[str, Callable]] = []
    for name in names:
        r = results[name] = Result(case.label, case.cell, mode, name, "ok", shape=shape)
        if name in GPU_ONLY and case.device != "cuda":
            r.status, r.detail = "skipped", "GPU only"
            continue
        if name in AUTOCAST_IMPLS and case.dtype not in AUTOCAST_DTYPES:
            r.status, r.detail = "skipped", f"autocast: {' or '.join(AUTOCAST_DTYPES)} only"
            continue
        try:
            candidates.append((name, build_impl(name, module, case)))
        except Exception as error:  # noqa: BLE001 - reported in the table
            r.status, r.detail = "error", _one_line(error)
    for name, fn in extra.items():
        results[name] = Result(case.label, case.cell, mode, name, "ok", shape=shape)
        candidates.append((name, fn))
    calls = _checked_calls(candidates, case, mode, settings, module, inputs, results, log)
    if settings.matmul:
        calls[MATMUL] = matmul_runner(case, mode)
        results[MATMUL] = Result(case.label, case.cell, mode, MATMUL, "ok",
                                 detail="the layer's matrix products alone (torch.mm)",
                                 shape=shape)
    _time(calls, case, mode, settings, results)
    if "rnnkit" in calls and case.device == "cuda":
        results["rnnkit"].cuda_path = cuda_path(mode)
    _relate(results)
    where = torch.cuda.get_device_name() if case.device == "cuda" else "cpu"
    for r in results.values():
        r.device, r.threads = where, torch.get_num_threads()
    return list(results.values())


def _checked_calls(candidates: Sequence[tuple[str, Callable]], case: Case, mode: str,
                   settings: Settings, module: torch.nn.Module, inputs,
                   results: dict[str, Result], log: Callable[[str], None]
                   ) -> dict[str, Callable[[], None]]:
    """The timed call of every candidate that agrees with the float64 reference (when checking);
    the others are marked wrong or error in ``results`` and left out."""
    ref = oracle(module, case, mode, inputs) if settings.check else None
    params = list(module.parameters())
    calls: dict[str, Callable[[], None]] = {}
    for name, run in candidates:
        r = results[name]
        try:
            if ref is not None:
                ok, detail = check_against_reference(run, module, case, mode, inputs, ref)
                r.detail = detail
                if not ok:
                    r.status = "wrong"
                    log(f"  {name}: WRONG ({detail}); not timed")
                    continue
            calls[name] = repeatable_call(run, inputs, mode, params)
        except Exception as error:  # noqa: BLE001 - reported in the table
            r.status, r.detail = "error", _one_line(error)
            log(f"  {name}: error ({r.detail}); not timed")
    return calls


def _time(calls: dict[str, Callable[[], None]], case: Case, mode: str, settings: Settings,
          results: dict[str, Result]) -> None:
    """Interleaved samples of ``calls``, summarised into their results, with GFLOP/s and (if
    asked) peak memory."""
    timed = interleaved(calls, case.device, settings.warmup, settings.repeats,
                        settings.min_sample_s) if calls else {}
    flops = layer_flops(case, mode)
    for name, (seconds, number) in timed.items():
        r = results[name]
        for k, v in summarize(seconds).items():
            setattr(r, k, v)
        r.samples, r.calls_per_sample = len(seconds), number
        r.gflops = flops / (r.median_ms / 1000) / 1e9
        if settings.memory:
            r.peak_mem_mb = peak_memory_mb(calls[name], case.device)


def _relate(results: dict[str, Result]) -> None:
    """Speed-up vs torch and fraction of the matmul rate, from the medians."""
    torch_r, mm = results.get("torch"), results.get(MATMUL)
    for r in results.values():
        if r.median_ms is None:
            continue
        if torch_r is not None and torch_r.median_ms is not None and r.impl != MATMUL:
            r.speedup_vs_torch = torch_r.median_ms / r.median_ms
        if mm is not None and mm.gflops:
            r.fraction_of_matmul = r.gflops / mm.gflops


def cuda_path(mode: str) -> str:
    """Which CUDA loop rnnkit's last layer call ran ("persistent" or "general: <why>"), forward
    and, in training mode, backward: rnnkit._C.persistent_last(), read right after rnnkit's timed
    calls (the other implementations never touch it). "" in builds without CUDA kernels."""
    if not hasattr(_library._C, "persistent_last"):
        return ""
    fwd, bwd = _library._C.persistent_last()
    return f"fwd {fwd}; bwd {bwd}" if mode == "training" else f"fwd {fwd}"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def run_cases(cases: Sequence[Case], settings: Settings, impls: Optional[Sequence[str]] = None,
              log: Callable[[str], None] = lambda message: None) -> list[Result]:
    """run_case for every case, after refusing (BenchError) any that would not fit in memory,
    before anything runs."""
    for case in cases:
        check_fits(case, settings.modes, settings.check)
    results: list[Result] = []
    for case in cases:
        results += run_case(case, settings, impls, log=log)
    return results
