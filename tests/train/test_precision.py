"""--precision: the training forward under autocast to bfloat16 with float32 weights and
optimiser; auto resolved when a run starts, the precision used saved in config.json and kept on
resume; runs saved before the option existed read as fp32; a bf16 run evaluates and generates."""

import json

import pytest
import torch

from rnnkit.train import checkpoint as C
from rnnkit.train import precision as P
from rnnkit.train.config import TrainConfig
from rnnkit.train.errors import UserError
from rnnkit.train.runs import evaluate_run, generate, resume_config, saved_config
from rnnkit.train.trainer import train

from .test_train import corpus, quiet, tiny  # noqa: F401  (corpus is a fixture)

#: rnnkit's kernels under autocast need the CPU bfloat16 kernels; torch.nn's work already.
IMPLS = ["rnnkit", "torch"]


def test_explicit_precisions_are_kept():
    for name in ("fp32", "bf16"):
        assert P.resolve_precision(name, torch.device("cpu")) == name


def test_bf16_on_a_gpu_without_bfloat16_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    with pytest.raises(UserError, match=r"^--precision bf16: Old GPU does not support bfloat16"):
        P.resolve_precision("bf16", torch.device("cuda"))
    assert P.resolve_precision("fp32", torch.device("cuda")) == "fp32"


@pytest.mark.parametrize("allowed,fast,want", [(False, True, "fp32"), (True, True, "bf16"),
                                               (True, False, "fp32")])
def test_auto_needs_the_measurement_and_the_hardware(monkeypatch, allowed, fast, want):
    monkeypatch.setattr(P, "AUTO_CHOOSES_BF16", allowed)
    monkeypatch.setattr(P, "fast_bf16", lambda device: fast)
    assert P.resolve_precision("auto", torch.device("cpu")) == want


def test_forward_context_autocasts_for_bf16_only():
    with P.forward_context("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with P.forward_context("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def test_a_config_saved_before_precision_existed_reads_as_fp32():
    saved = TrainConfig().to_json()
    del saved["precision"]
    assert TrainConfig.from_json(saved).precision == "fp32"
    with pytest.raises(UserError, match=r"field 'precision': expected one of \"auto\""):
        TrainConfig.from_json({**saved, "precision": "fp16"})


def test_auto_is_saved_as_the_precision_used(corpus, tmp_path):  # noqa: F811
    train(tiny(corpus, tmp_path / "run", steps=2), progress=False, echo=quiet)
    want = P.resolve_precision("auto", torch.device("cpu"))
    assert saved_config(str(tmp_path / "run")).precision == want in ("fp32", "bf16")


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_trains_in_bfloat16_with_float32_weights_and_resumes_as_bf16(corpus, tmp_path,  # noqa: F811
                                                                          impl):
    runs = {p: tmp_path / p for p in ("fp32", "bf16")}
    for p, out in runs.items():
        train(tiny(corpus, out, steps=4, impl=impl, precision=p), progress=False, echo=quiet)
    assert saved_config(str(runs["bf16"])).precision == "bf16"
    losses = {p: [r["loss"] for r in C.read_metrics(str(out)) if r["split"] == "train"]
              for p, out in runs.items()}
    # the same seed and data: bfloat16 arithmetic moves the loss a little, not a lot
    assert losses["bf16"][0] != losses["fp32"][0]
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], abs=0.05)
    state = C.load_last(str(runs["bf16"]))
    assert {t.dtype for t in state["model"].values()} == {torch.float32}
    # resume keeps bf16; asking for fp32 contradicts the saved config
    with pytest.raises(UserError, match=r"--precision fp32 \(saved: bf16\)"):
        resume_config(str(runs["bf16"]), {"precision": "fp32"})
    config = resume_config(str(runs["bf16"]), {"steps": 6})
    train(config, resume=True, progress=False, echo=quiet)
    saved = json.loads((runs["bf16"] / "config.json").read_text())["config"]
    assert saved["precision"] == "bf16"
    assert C.load_last(str(runs["bf16"]))["meta"]["step"] == 6
    # evaluation and generation of the bf16-trained run (float32 weights)
    metrics = evaluate_run(str(runs["bf16"]), device="cpu")
    assert metrics["loss"] == pytest.approx(min(r["loss"] for r in C.read_metrics(
        str(runs["bf16"])) if r["split"] == "valid"), rel=1e-6)
    assert len("".join(generate(str(runs["bf16"]), "RO", 20, seed=1, device="cpu"))) == 20
