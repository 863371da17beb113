"""rnnkit inspect (rnnkit.gates): the gate values it computes, what it shows, its errors."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from rnnkit.lessons import inspect_gates as GT
from rnnkit.cli import main
from rnnkit.train.runs import load_run

from ..helpers import one_line_error

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TEXT = ("KING:\nWhat say you, my lord? Speak, and be brief.\n\n"
        "LORD:\nMy liege, the night is cold and full of fear.\n\n") * 20
TINY = ["--hidden-size", "12", "--embed-size", "6", "--batch-size", "4", "--seq-len", "16",
        "--threads", "1", "--steps", "4", "--eval-every", "4", "-q"]


def _train(tmp, name, *extra):
    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(TEXT)
    out = str(tmp / name)
    r = CliRunner().invoke(main, ["train", "--data", str(corpus), "--out", out, *TINY, *extra])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gates")
    return {"lstm": _train(tmp, "lstm"), "lstm2": _train(tmp, "lstm2", "--num-layers", "2"),
            "gru": _train(tmp, "gru", "--cell", "gru"),
            "adding": _train(tmp, "adding", "--task", "adding")}


def test_gates_equal_the_lstm_cell_gate_math(runs):
    text = "What say you, my lord?\nSpeak."
    trace = GT.trace_run(runs["lstm"], text)
    _, task, model, _ = load_run(runs["lstm"])
    ids = torch.tensor(task.vocab.encode(text))
    x = model.embed(ids).detach().double()  # (L, E)
    rnn = model.rnn
    cell = torch.nn.LSTMCell(x.shape[1], rnn.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, f"{name}_l0"))
    h = c = torch.zeros(1, rnn.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        for t in range(len(text)):
            pre = (F.linear(x[t:t + 1], cell.weight_ih, cell.bias_ih)
                   + F.linear(h, cell.weight_hh, cell.bias_hh))
            a_i, a_f, a_g, a_o = pre.chunk(4, dim=1)  # torch.nn's gate order
            h, c = cell(x[t:t + 1], (h, c))
            for name, expected in (("input", a_i.sigmoid()), ("forget", a_f.sigmoid()),
                                   ("cell_input", a_g.tanh()), ("output", a_o.sigmoid()),
                                   ("cell", c), ("hidden", h)):
                torch.testing.assert_close(getattr(trace, name)[t], expected[0], rtol=1e-12,
                                           atol=1e-12, msg=f"{name} at {t}")
    # and the run's own (fused, float32) layer gives the same hidden states
    with torch.no_grad():
        out, _ = model.rnn(model.embed(ids).unsqueeze(1))
    torch.testing.assert_close(trace.hidden.float(), out[:, 0], rtol=1e-5, atol=1e-6)


def test_second_layer_reads_the_first(runs):
    text = "my liege"
    trace = GT.trace_run(runs["lstm2"], text)
    assert trace.layer == 2
    _, task, model, _ = load_run(runs["lstm2"])
    with torch.no_grad():
        out, _ = model.rnn(model.embed(torch.tensor(task.vocab.encode(text))).unsqueeze(1))
    torch.testing.assert_close(trace.hidden.float(), out[:, 0], rtol=1e-5, atol=1e-6)
    first = GT.trace_run(runs["lstm2"], text, layer=1)
    assert not torch.allclose(first.hidden, trace.hidden)


def test_units_are_the_most_variable_or_the_chosen(runs):
    trace = GT.trace_run(runs["lstm"], "What say you, my lord?")
    picked = GT.pick_units(trace, 4)
    spread = trace.cell.std(0, unbiased=False)
    assert len(picked) == 4 and spread[picked].min() == spread.sort().values[-4]
    assert spread[picked[0]] == spread.max()
    assert GT.pick_units(trace, 4, [5, 2, 5]) == [5, 2]


def test_cli_terminal_view_json_and_png(runs, tmp_path):
    text = "KING:\nWhat say you, my lord? Speak, and be brief."
    png, js = tmp_path / "g.png", tmp_path / "g.json"
    r = CliRunner().invoke(main, ["inspect", runs["lstm"], "--text", text, "--show", "2",
                                  "--units", "5", "--width", "20", "--png", str(png),
                                  "--json", str(js), "--no-color"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    texts = [ln for ln in lines if ln.startswith("  text")]
    assert len(text) == 49 and len(texts) == 2 * 3  # two units, 49 characters in lines of 20
    assert "".join(t.split("│")[1] for t in texts[:3]) == text.replace("\n", "⏎")
    for name in ("forget", "input", "output", "cell"):
        rows = [ln.split("│")[1] for ln in lines if ln.startswith(f"  {name} ")]
        assert [len(x) for x in rows] == [20, 20, 9] * 2
        assert set("".join(rows)) <= set(GT.SHADES)
    assert "\x1b[" not in r.output
    data = json.loads(js.read_text())
    assert len(data["units"]) == 5 and len(data["forget"][0]) == len(text)
    assert all(0 <= v <= 1 for row in data["forget"] for v in row)
    # the first unit shown is the first of the JSON's; its cell row runs from blank at its lowest
    # cell state to full at its highest, and its forget row shades f itself
    assert f"unit {data['units'][0]} " in r.output
    cell_row = "".join([ln.split("│")[1] for ln in lines if ln.startswith("  cell ")][:3])
    forget_row = "".join([ln.split("│")[1] for ln in lines if ln.startswith("  forget ")][:3])
    trace = GT.trace_run(runs["lstm"], text)
    unit = data["units"][0]
    c, f = trace.cell[:, unit], trace.forget[:, unit]
    assert cell_row[int(c.argmin())] == " " and cell_row[int(c.argmax())] == "█"
    assert forget_row == "".join(GT.SHADES[min(4, int(v * 5))] for v in f.tolist())
    try:
        import matplotlib  # noqa: F401

        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert "PNG skipped" in r.output
    coloured = CliRunner().invoke(main, ["inspect", runs["lstm"], "--text", "my lord",
                                         "--color", "--no-png", "--unit", "3"], color=True)
    assert coloured.exit_code == 0 and "\x1b[" in coloured.output
    assert re.search(r"unit 3 ", coloured.output) and "unit 0 " not in coloured.output


@pytest.mark.parametrize("args,message", [
    (["--run", "adding", "--text", "hi"], "needs a character-level LSTM run"),
    (["--run", "gru", "--text", "hi"], "--cell gru"),
    (["--run", "lstm", "--text", ""], "--text is empty"),
    (["--run", "lstm", "--text", "my lord #1é"], "'#' '1' 'é'"),
    (["--run", "lstm2", "--text", "my", "--layer", "3"], "the run has 2 layer(s)"),
    (["--run", "lstm", "--text", "my", "--unit", "12"], "--unit 12: the layer has 12 units"),
])
def test_cli_errors_are_one_line(runs, args, message):
    run = runs[args[1]]
    r = CliRunner().invoke(main, ["inspect", run, *args[2:], "--no-png"])
    line = one_line_error(r)
    assert message in line, line


def test_without_matplotlib_the_png_is_skipped_with_a_reason(runs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    png = tmp_path / "g.png"
    r = CliRunner().invoke(main, ["inspect", runs["lstm"], "--text", "my lord", "--png",
                                  str(png), "--no-color"])
    assert r.exit_code == 0, r.output
    assert "PNG skipped" in r.output and "pip install matplotlib" in r.output
    assert "  forget │" in r.output and not png.exists()
