"""rnnkit train's layer options: weight drop, variational dropout, zoneout, forget bias, chrono
initialisation and the LayerNorm cells; from the config to the model and back from a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rnnkit
from rnnkit.train import checkpoint as C
from rnnkit.train.config import TrainConfig
from rnnkit.train.errors import UserError
from rnnkit.train.registry import build_model, build_task
from rnnkit.train.runs import load_run
from rnnkit.train.trainer import train

HAS_LAYERNORM = hasattr(rnnkit, "LayerNormLSTM")


def _model(**kw):
    config = TrainConfig(task="copy", hidden_size=6, embed_size=4, seq_len=5, **kw).resolved()
    torch.manual_seed(0)
    return build_model(build_task(config).spec, config)


def test_dropouts_reach_rnnkit_layers():
    rnn = _model(weight_drop=0.3, variational_dropout=0.2).rnn
    assert (rnn.weight_drop, rnn.variational_dropout) == (0.3, 0.2)
    assert _model().rnn.weight_drop == 0.0


@pytest.mark.parametrize("impl", ["rnnkit", "torch", "reference"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bias_initialisations_work_for_every_impl(impl, cell):
    H = 6
    rnn = _model(impl=impl, cell=cell, forget_bias=2.0).rnn
    assert torch.equal(rnn.bias_ih_l0.detach()[H:2 * H], torch.full((H,), 2.0))
    assert torch.equal(rnn.bias_hh_l0.detach()[H:2 * H], torch.zeros(H))
    rnn = _model(impl=impl, cell=cell, chrono=40).rnn
    forget = rnn.bias_ih_l0.detach()[H:2 * H]
    assert forget.min() >= 0 and forget.max() <= math.log(39) and forget.std() > 0


@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("option,flag", [("weight_drop", "--weight-drop"),
                                         ("variational_dropout", "--variational-dropout")])
def test_dropouts_need_rnnkit_layers(impl, option, flag):
    with pytest.raises(UserError, match=f"^{flag}: the {impl} LSTM layer .* has no {option} "
                                        f"argument; use --impl rnnkit"):
        _model(impl=impl, **{option: 0.1})


@pytest.mark.parametrize("kw,words", [
    ({"cell": "rnn", "forget_bias": 1.0}, "need a gated cell"),
    ({"cell": "rnn", "chrono": 10}, "need a gated cell"),
    ({"forget_bias": 1.0, "chrono": 10}, "both set the forget gate's bias"),
])
def test_bad_combinations_are_refused(kw, words):
    with pytest.raises(UserError, match=words):
        TrainConfig(task="copy", **kw).resolved()


@pytest.mark.parametrize("field,value", [("weight_drop", 1.0), ("variational_dropout", -0.1),
                                         ("zoneout", 1), ("chrono", 2), ("forget_bias", "1")])
def test_saved_options_are_checked(field, value):
    saved = TrainConfig(task="copy").to_json()
    saved[field] = value
    with pytest.raises(UserError, match=f"field '{field}': expected"):
        TrainConfig.from_json(saved, "x/config.json")


def _tiny(out, **kw):
    return TrainConfig(task="copy", hidden_size=8, embed_size=4, batch_size=4, seq_len=5,
                       steps=8, eval_every=4, threads=1, warmup_steps=2, out=str(out), **kw)


def test_a_run_saves_its_options_and_resumes_exactly(tmp_path):
    """The masks come from the RNG that a checkpoint saves, so a resumed run is the same run."""
    kw = dict(num_layers=2, weight_drop=0.3, variational_dropout=0.2, forget_bias=1.0)
    whole = train(_tiny(tmp_path / "whole", **kw), progress=False, echo=lambda s: None)
    cut = train(_tiny(tmp_path / "cut", **kw), progress=False, echo=lambda s: None,
                should_stop=lambda step: step == 4)
    assert cut.interrupted
    from rnnkit.train.runs import resume_config

    train(resume_config(str(tmp_path / "cut"), {}), resume=True, progress=False,
          echo=lambda s: None)
    a = C.load_last(str(tmp_path / "whole"))["model"]
    b = C.load_last(str(tmp_path / "cut"))["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert whole.step == 8
    saved = json.loads((tmp_path / "cut" / "config.json").read_text())["config"]
    assert {k: saved[k] for k in kw} == kw
    # evaluation: the training-only dropouts stay out, so another implementation loads the run
    _, _, model, _ = load_run(str(tmp_path / "cut"), impl="torch")
    assert type(model.rnn) is torch.nn.LSTM


@pytest.mark.skipif(HAS_LAYERNORM, reason="rnnkit.LayerNormLSTM exists: the next test runs it")
def test_layernorm_cells_say_they_are_missing():
    with pytest.raises(UserError, match="rnnkit.LayerNormLSTM does not exist in this install"):
        _model(cell="layernorm-lstm")


@pytest.mark.skipif(not HAS_LAYERNORM, reason="rnnkit.LayerNormLSTM is missing (the LayerNorm "
                                              "branch is not merged)")
@pytest.mark.parametrize("cell,cls", [("layernorm-lstm", "LayerNormLSTM"),
                                      ("layernorm-gru", "LayerNormGRU")])
def test_layernorm_cells_train(tmp_path, cell, cls):
    result = train(_tiny(tmp_path / "run", cell=cell, chrono=10), progress=False,
                   echo=lambda s: None)
    assert result.step == 8
    _, _, model, _ = load_run(str(tmp_path / "run"))
    assert type(model.rnn) is getattr(rnnkit, cls)


@pytest.mark.skipif(not HAS_LAYERNORM, reason="rnnkit.LayerNormLSTM is missing (the LayerNorm "
                                              "branch is not merged)")
@pytest.mark.parametrize("cell", ["layernorm-lstm", "layernorm-gru"])
def test_a_layernorm_zoneout_run_resumes_exactly(tmp_path, cell):
    """The LayerNorm layers take --zoneout; its masks come from the RNG a checkpoint saves, so a
    run cut at step 4 and resumed ends with the weights of the run that went through."""
    from rnnkit.train.runs import resume_config

    whole = train(_tiny(tmp_path / "whole", cell=cell, zoneout=0.3), progress=False,
                  echo=lambda s: None)
    cut = train(_tiny(tmp_path / "cut", cell=cell, zoneout=0.3), progress=False,
                echo=lambda s: None, should_stop=lambda step: step == 4)
    assert cut.interrupted and whole.step == 8
    train(resume_config(str(tmp_path / "cut"), {}), resume=True, progress=False,
          echo=lambda s: None)
    a = C.load_last(str(tmp_path / "whole"))["model"]
    b = C.load_last(str(tmp_path / "cut"))["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    _, _, model, _ = load_run(str(tmp_path / "cut"))
    assert model.rnn.zoneout == 0.3


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zoneout_reaches_the_layer(cell):
    rnn = _model(cell=cell, zoneout=0.25).rnn
    assert rnn.zoneout == 0.25
    if cell == "lstm":
        assert rnn.zoneout_cell == 0.25
    else:
        assert not hasattr(rnn, "zoneout_cell")


@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_zoneout_needs_rnnkit_layers(impl):
    with pytest.raises(UserError, match=f"^--zoneout: the {impl} LSTM layer .* has no zoneout, "
                                        f"zoneout_cell argument; use --impl rnnkit"):
        _model(impl=impl, zoneout=0.1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_zoneout_run_trains_and_evaluates_with_it(tmp_path, cell):
    """Zoneout changes evaluation too (the layers mix with p), so the loaded model keeps it and
    its evaluation differs from the same weights without zoneout."""
    result = train(_tiny(tmp_path / "run", cell=cell, zoneout=0.3), progress=False,
                   echo=lambda s: None)
    assert result.step == 8
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["zoneout"] == 0.3
    _, _, model, _ = load_run(str(tmp_path / "run"))
    assert model.rnn.zoneout == 0.3
    model.eval()
    x = torch.randint(0, model.spec.vocab_size, (5, 2))
    with torch.no_grad():
        with_zoneout = model(x)[0]
        plain = type(model.rnn)(model.rnn.input_size, model.rnn.hidden_size)
        plain.load_state_dict(model.rnn.state_dict())
        model.rnn = plain.eval()
        without = model(x)[0]
    assert torch.isfinite(with_zoneout).all()
    assert not torch.allclose(with_zoneout, without)
