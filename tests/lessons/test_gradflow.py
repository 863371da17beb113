"""rnnkit.gradflow: the per-step gradient norms it measures, and rnnkit gradflow end to end."""

import json

import pytest
import torch
from click.testing import CliRunner

from rnnkit.lessons import gradflow as G
from rnnkit import reference
from rnnkit.cli import main
from rnnkit.train.config import TrainConfig
from rnnkit.train.registry import build_task

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.mark.parametrize("a", [0.5, 1.0, 1.3])
def test_linear_recurrence_gives_powers_of_a(a):
    # h_t = a h_{t-1} + x_t and L = sum of h_T's entries: dL/dh_t = a^(T-t) in every entry
    T, N, H = 12, 3, 4
    step = lambda x, s: (a * s[0] + x,)  # noqa: E731
    h0 = (torch.zeros(N, H, dtype=torch.float64, requires_grad=True),)
    norms = G.hidden_gradient_norms(step, torch.randn(T, N, H, dtype=torch.float64), h0,
                                    lambda hs: hs[-1].sum(1))
    expected = torch.tensor([a ** (T - t) * H ** 0.5 for t in range(1, T + 1)],
                            dtype=torch.float64)
    assert set(norms) == {"h"} and norms["h"].shape == (T,)
    torch.testing.assert_close(norms["h"], expected, rtol=1e-12, atol=0)


def test_two_part_state_and_per_sequence_gradients():
    # the c path of an LSTM-like state is measured too; a sequence's gradient ignores the others
    T, N = 5, 2
    def step(x, s):
        h, c = s
        c = 0.9 * c + x
        return 2.0 * c, c
    state0 = tuple(torch.zeros(N, 1, dtype=torch.float64, requires_grad=True) for _ in range(2))
    x = torch.ones(T, N, 1, dtype=torch.float64)
    weights = torch.tensor([1.0, 3.0], dtype=torch.float64)  # loss of sequence n: w_n * h_T
    norms = G.hidden_gradient_norms(step, x, state0, lambda hs: hs[-1][:, 0] * weights)
    # the step never reads h, so h_t reaches the loss only when t = T (h_T itself, weight 1 or
    # 3); c_t reaches it through h_T = 2 c_T as 2 * 0.9^(T-t) * w_n for t < T, and c_T is read by
    # nothing (the loss reads h_T, held apart from c_T)
    assert norms["h"][:-1].abs().max() == 0 and norms["h"][-1] == pytest.approx(2.0)
    expected_c = torch.tensor([2 * 0.9 ** (T - t) * 2.0 for t in range(1, T)] + [0.0],
                              dtype=torch.float64)
    torch.testing.assert_close(norms["c"], expected_c)


def _model(cell, seq_len=30, hidden=8, task="adding"):
    from rnnkit.train.registry import build_model

    config = TrainConfig(task=task, cell=cell, hidden_size=hidden, seq_len=seq_len, seed=3,
                         embed_size=4).resolved()
    t = build_task(config)
    torch.manual_seed(0)
    return build_model(t.spec, config), t


def test_tanh_rnn_with_small_weights_vanishes():
    model, task = _model("rnn")
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(0.3)
    norms = G.model_gradient_norms(model, task.valid.x[:, :16], task.valid.y[:16])["h"]
    assert norms.shape == (30,)
    assert bool((norms[:-1] < norms[1:]).all())  # shrinks at every step back from the loss
    assert norms[0] < 1e-6 * norms[-1]


def test_a_recurrence_built_to_carry_keeps_the_gradient():
    # an LSTM whose forget gate is saturated open and input gate shut: c_t = c_{t-1}, so the
    # gradient that reaches c_{T-1} (through h_T = o tanh(c_T)) reaches c_1 undiminished
    model, task = _model("lstm")
    H = model.rnn.hidden_size
    with torch.no_grad():
        model.rnn.bias_ih_l0[H:2 * H] = 30.0  # f = 1
        model.rnn.bias_ih_l0[:H] = -30.0  # i = 0
    norms = G.model_gradient_norms(model, task.valid.x[:, :16], task.valid.y[:16])
    assert norms["c"].shape == (30,)
    c = norms["c"]
    assert c[-1] == 0  # only h_T is read at the end
    assert c[0] > 0
    torch.testing.assert_close(c[:-1], c[-2].expand(29), rtol=1e-4, atol=0)
    assert norms["h"][0] < 1e-3 * norms["h"][-1]  # the h path alone would not carry it


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task", ["adding", "copy"])
def test_fused_cells_measure_what_the_reference_measures(cell, task):
    model, t = _model(cell, seq_len=6, task=task)
    x, y = t.valid.x[:, :5], t.valid.y[..., :5]
    fused = G.model_gradient_norms(model, x, y)

    rnn = model.rnn
    w = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    steps = {"lstm": lambda x, s: reference.lstm_cell(x, s[0], s[1], *w),
             "gru": lambda x, s: (reference.gru_cell(x, s[0], *w),),
             "rnn": lambda x, s: (reference.rnn_cell(x, s[0], *w),)}
    inputs = (model.embed(x) if model.embed is not None else x).detach()
    state0 = tuple(torch.zeros(5, rnn.hidden_size, requires_grad=True)
                   for _ in range(2 if cell == "lstm" else 1))
    ref = G.hidden_gradient_norms(steps[cell], inputs, state0,
                                  lambda hs: G.sequence_losses(model, hs, y))
    assert fused.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-4, atol=1e-7)


def test_cli_trains_measures_and_writes(tmp_path):
    png, js = tmp_path / "g.png", tmp_path / "g.json"
    r = CliRunner().invoke(main, ["gradflow", "--seq-len", "12", "--steps", "3",
                                  "--hidden-size", "8", "--batch-size", "8", "--cells", "rnn,lstm",
                                  "--sequences", "8", "--threads", "1", "--png", str(png),
                                  "--json", str(js), "--keep-runs", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    data = json.loads(js.read_text())
    cells = [c["cell"] for c in data["curves"]]
    assert cells == ["rnn", "lstm"]
    for c in data["curves"]:
        assert len(c["init"]["h"]) == 12 and len(c["trained"]["h"]) == 12
        assert c["init"]["h"] != c["trained"]["h"]  # three steps moved the weights
    assert "c" in data["curves"][1]["init"] and "mse" in data["curves"][0]["valid"]
    assert "rnn" in r.output and "lstm" in r.output
    try:
        import matplotlib  # noqa: F401

        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert "skipped" in r.output
    # measuring the kept runs again (--run) gives the same numbers
    r2 = CliRunner().invoke(main, ["gradflow", "--run", str(tmp_path / "runs" / "lstm"),
                                   "--sequences", "8", "--json", str(js), "--no-png"])
    assert r2.exit_code == 0, r2.output
    again = json.loads(js.read_text())["curves"][0]
    assert again["trained"] == data["curves"][1]["trained"]
    assert again["init"] == data["curves"][1]["init"]


def test_cli_refuses_a_run_of_another_task(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, hello there\n" * 40)
    run = str(tmp_path / "lm")
    r = CliRunner().invoke(main, ["train", "--data", str(corpus), "--steps", "1", "--out", run,
                                  "--hidden-size", "8", "--embed-size", "4", "--batch-size", "2",
                                  "--seq-len", "8", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["gradflow", "--run", run, "--no-png", "--json",
                                  str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "needs an adding or copy run" in r.output and "'charlm'" in r.output


def test_cli_refuses_a_stacked_model(tmp_path):
    run = str(tmp_path / "deep")
    r = CliRunner().invoke(main, ["train", "--task", "adding", "--seq-len", "6", "--steps", "1",
                                  "--num-layers", "2", "--hidden-size", "4", "--batch-size", "2",
                                  "--out", run, "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["gradflow", "--run", run, "--no-png", "--json",
                                  str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "one-layer, one-direction models; this one has 2 layer(s)" in r.output
