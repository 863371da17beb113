"""--task seq2seq: number spelling data, masking, the encoder-decoder, greedy decoding, the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner

from rnnkit.train import checkpoint as C
from rnnkit.train import seq2seq as S
from rnnkit.cli import main
from rnnkit.train.errors import UserError
from rnnkit.train.registry import build_task
from rnnkit.train.config import TrainConfig
from rnnkit.train.runs import evaluate_run, load_run, translate
from rnnkit.train.trainer import train

from ..helpers import one_line_error

TINY = dict(seq_len=3, hidden_size=16, embed_size=8, batch_size=8, threads=1, warmup_steps=2)
TINY_CLI = ["--task", "seq2seq", "--seq-len", "3", "--hidden-size", "16", "--embed-size", "8",
            "--batch-size", "8", "--threads", "1", "--device", "cpu", "-q"]


def quiet(*_):
    pass


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (10, "ten"), (11, "eleven"), (19, "nineteen"), (20, "twenty"),
    (21, "twenty one"), (99, "ninety nine"), (100, "one hundred"), (101, "one hundred one"),
    (110, "one hundred ten"), (115, "one hundred fifteen"), (999, "nine hundred ninety nine"),
    (1000, "one thousand"), (1001, "one thousand one"), (4071, "four thousand seventy one"),
    (12000, "twelve thousand"), (100000, "one hundred thousand"),
    (999999, "nine hundred ninety nine thousand nine hundred ninety nine"),
    (1000000, "one million"), (1000100, "one million one hundred"),
    (20000019, "twenty million nineteen"),
    (999999999, "nine hundred ninety nine million nine hundred ninety nine thousand nine "
                "hundred ninety nine")])
def test_number_to_words(n, words):
    assert " ".join(S.number_to_words(n)) == words


@pytest.mark.parametrize("n", [-1, 10 ** 9])
def test_number_to_words_refuses_numbers_outside_the_range(n):
    with pytest.raises(ValueError, match="from 0 to 999,999,999"):
        S.number_to_words(n)


def test_every_word_is_in_the_target_vocabulary_and_lengths_bound():
    for digits in range(1, S.MAX_DIGITS + 1):
        longest = max(len(S.number_to_words(n)) for n in
                      [10 ** (digits - 1), 10 ** digits - 1, int("7" * digits),
                       int("1" * digits)]) + 1
        assert S.max_target_len(digits) == longest
    seen = {w for n in range(0, 1_000_000, 997) for w in S.number_to_words(n)}
    assert seen <= set(S.TARGET.itos) and "thousand" in seen


def test_draws_cover_each_length_and_have_no_leading_zeros():
    g = torch.Generator().manual_seed(0)
    n = S.draw_numbers(6000, 6, g)
    lengths = torch.tensor([len(str(v)) for v in n.tolist()])
    assert n.min() >= 0 and n.max() < 10 ** 6
    counts = torch.bincount(lengths, minlength=7)[1:]
    assert counts.min() > 800 and counts.max() < 1200  # digit counts uniform in 1..6
    assert (n[lengths == 1] < 10).all() and (n[lengths == 1] >= 0).all()
    tails = "".join(str(v)[1:] for v in n.tolist())  # digits after the first
    zeros = tails.count("0") / len(tails)
    assert 0.1 + 0.9 * S.ZERO_RATE - 0.02 < zeros < 0.1 + 0.9 * S.ZERO_RATE + 0.02
    assert set(tails) == set("0123456789")
    assert ((n >= 100) & (n % 100 == 0)).float().mean() > 0.05  # uniform digits: 0.007


def test_batches_depend_only_on_seed_and_step_and_skip_validation():
    c = TrainConfig(task="seq2seq", seq_len=3, batch_size=64).resolved()
    a, b = build_task(c), build_task(c)
    assert torch.equal(a.batch(7).x, b.batch(7).x) and torch.equal(a.batch(7).y, b.batch(7).y)
    assert not torch.equal(a.numbers(7), a.numbers(8))
    other = build_task(TrainConfig(task="seq2seq", seq_len=3, seed=5).resolved())
    assert not torch.equal(a.valid_numbers, other.valid_numbers)
    valid = set(a.valid_numbers.tolist())
    assert len(valid) == len(a.valid_numbers) == 90  # distinct; a tenth of the 3-digit numbers
    assert min(valid) >= 100
    trained = torch.cat([a.numbers(s) for s in range(300)])
    assert not set(trained.tolist()) & valid  # ~600 draws would hit it without the redraw
    assert len(set(trained.tolist())) > 700  # still covers most of the rest


def test_batch_encodes_digits_and_words():
    b = S.encode_pairs([4071, 5])
    assert S.SOURCE.decode(b.x[:4, 0].tolist()) == list("4071")
    assert b.lengths.tolist() == [4, 1] and b.target_lengths.tolist() == [5, 2]
    assert S.TARGET.decode(b.y[:, 0].tolist()) == ["four", "thousand", "seventy", "one", "<eos>"]
    assert b.y[2:, 1].eq(S.PAD).all() and b.x[1:, 1].eq(S.PAD).all()


def model_and_task(impl="rnnkit", cell="lstm", **kw):
    c = TrainConfig(task="seq2seq", impl=impl, cell=cell, **{**TINY, **kw}).resolved()
    task = build_task(c)
    torch.manual_seed(0)
    from rnnkit.train.registry import build_model

    return build_model(task.spec, c).eval(), task


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_loss_ignores_whatever_padding_holds(cell):
    model, task = model_and_task(cell=cell)
    b = S.encode_pairs([5, 42, 100, 999, 7, 310])
    base = task.loss(model, b)[0].item()
    g = torch.Generator().manual_seed(1)
    x, y = b.x.clone(), b.y.clone()
    pad_x = ~S.length_mask(b.lengths, x.shape[0])
    pad_y = ~S.length_mask(b.target_lengths, y.shape[0])
    x[pad_x] = torch.randint(1, 11, (int(pad_x.sum()),), generator=g)
    y[pad_y] = torch.randint(3, len(S.TARGET), (int(pad_y.sum()),), generator=g)
    garbage = S.Batch(x, y, b.lengths, target_lengths=b.target_lengths)
    assert task.loss(model, garbage)[0].item() == pytest.approx(base, rel=1e-6, abs=1e-7)
    y[0, 0] = (y[0, 0] + 1) % len(S.TARGET)  # a real position: the loss must move
    assert task.loss(model, S.Batch(x, y, b.lengths, target_lengths=b.target_lengths)
                     )[0].item() != pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("cell, bidirectional", [("lstm", True), ("gru", False)])
def test_greedy_decode_agrees_with_teacher_forcing_on_its_own_output(cell, bidirectional):
    model, task = model_and_task(cell=cell, bidirectional=bidirectional, num_layers=2)
    b = S.encode_pairs([5, 42, 100, 999, 7, 310])
    pred = S.greedy_decode(model, b.x, b.lengths, 6)  # (N, 6)
    scores = model(b.x, b.lengths, S.decoder_inputs(pred.t()))
    scores[..., [S.PAD, S.BOS]] = float("-inf")
    expect = scores.argmax(-1).t()
    for row, want in zip(pred, expect):  # equal up to and including the first EOS
        k = int((row == S.EOS).nonzero()[0]) + 1 if (row == S.EOS).any() else len(row)
        assert torch.equal(row[:k], want[:k])
        assert row[k:].eq(S.PAD).all()


def test_bidirectional_encoder_state_joins_directions_per_layer():
    model, _ = model_and_task(impl="torch", bidirectional=True, num_layers=2)
    b = S.encode_pairs([5, 42, 100])
    h, c = model.encode(b.x, b.lengths)
    assert h.shape == (2, 3, 32) and model.decoder.hidden_size == 32
    packed = torch.nn.utils.rnn.pack_padded_sequence(model.src_embed(b.x), b.lengths,
                                                     enforce_sorted=False)
    _, (hn, _) = model.encoder(packed)  # (layers * 2, N, H): l0 fwd, l0 bwd, l1 fwd, l1 bwd
    assert torch.equal(h[1], torch.cat([hn[2], hn[3]], -1))
    assert torch.equal(h[0, :, 16:], hn[1])


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A small model trained long enough to get some numbers right and some wrong."""
    out = tmp_path_factory.mktemp("s2s") / "run"
    res = train(TrainConfig(task="seq2seq", out=str(out), steps=150, eval_every=150,
                            **{**TINY, "hidden_size": 48, "batch_size": 32}, lr=1e-2),
                progress=False, echo=quiet)
    return str(out), res


def test_small_model_learns_and_metrics_agree_with_decoding_one_by_one(learned):
    out, res = learned
    v = res.valid
    assert v["examples"] == 90 and 0.0 < v["exact_match"] < v["token_accuracy"] < 1.0
    assert v["token_accuracy"] > 0.5  # chance is about 1/31 per word
    _, task, _, _ = load_run(out, device="cpu")
    numbers = task.valid_numbers.tolist()
    pairs = translate(out, " ".join(map(str, numbers)), device="cpu")
    one_by_one = sum(words == " ".join(S.number_to_words(n))
                     for n, (_, words) in zip(numbers, pairs)) / len(numbers)
    assert one_by_one == pytest.approx(v["exact_match"])


def test_cli_train_eval_generate_and_impl_interchange(tmp_path):
    out = str(tmp_path / "run")
    r = CliRunner().invoke(main, ["train", *TINY_CLI, "--steps", "4", "--eval-every", "2",
                                  "--out", out])
    assert r.exit_code == 0, r.output
    assert "exact_match" in r.output and "token_accuracy" in r.output
    metrics = {}
    for impl in ("rnnkit", "torch", "reference"):
        r = CliRunner().invoke(main, ["eval", out, "--impl", impl, "--device", "cpu", "--json"])
        assert r.exit_code == 0, r.output
        metrics[impl] = json.loads(r.output)
    assert set(metrics["rnnkit"]) >= {"loss", "exact_match", "token_accuracy", "examples"}
    for impl in ("torch", "reference"):
        assert metrics[impl]["loss"] == pytest.approx(metrics["rnnkit"]["loss"], rel=1e-5)
        for key in ("exact_match", "token_accuracy", "examples"):
            assert metrics[impl][key] == metrics["rnnkit"][key]
    r = CliRunner().invoke(main, ["generate", out, "--prompt", "7 042 999"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == ["7", "42", "999"]
    r = CliRunner().invoke(main, ["train", "--resume", out, "--steps", "6", "-q"])
    assert r.exit_code == 0 and "done: 6 steps" in r.output, r.output


@pytest.mark.parametrize("prompt, message", [
    ("12a", "expected numbers written in digits 0-9, got '12a'"),
    ("4,071", "got '4,071'"), ("-5", "got '-5'"), ("\u0663", "got '\u0663'"),
    ("4071", "at most 3 digits, got 4071 (4 digits)")])
def test_generate_refuses_bad_prompts_in_one_line(tmp_path, prompt, message):
    out = str(tmp_path / "run")
    train(TrainConfig(task="seq2seq", out=out, steps=1, **TINY), progress=False, echo=quiet)
    line = one_line_error(CliRunner().invoke(main, ["generate", out, "--prompt", prompt]))
    assert message in line


def test_bad_options_and_eval_data(tmp_path):
    line = one_line_error(CliRunner().invoke(main, ["train", *TINY_CLI, "--seq-len", "12",
                                                    "--out", str(tmp_path / "x")]))
    assert "from 3 to 9; got 12" in line
    out = str(tmp_path / "run")
    train(TrainConfig(task="seq2seq", out=out, steps=1, **TINY), progress=False, echo=quiet)
    other = tmp_path / "other.txt"
    other.write_text("4071\n")
    line = one_line_error(CliRunner().invoke(main, ["eval", out, "--data", str(other)]))
    assert "takes no --data" in line


def test_translate_needs_a_seq2seq_run(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc def\n" * 200)
    out = str(tmp_path / "lm")
    train(TrainConfig(data=str(corpus), out=out, steps=1, hidden_size=8, embed_size=4,
                      batch_size=2, seq_len=8, threads=1), progress=False, echo=quiet)
    with pytest.raises(UserError, match="needs a seq2seq run, this one is 'charlm'"):
        translate(out, "1", device="cpu")


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    kw = dict(steps=6, eval_every=3, log_every=1, dropout=0.2, num_layers=2, **TINY)
    train(TrainConfig(task="seq2seq", out=str(tmp_path / "whole"), **kw), progress=False,
          echo=quiet)
    cut = train(TrainConfig(task="seq2seq", out=str(tmp_path / "cut"), **kw), progress=False,
                echo=quiet, should_stop=lambda step: step == 2)
    assert cut.step == 2
    train(TrainConfig(task="seq2seq", out=str(tmp_path / "cut"), **kw), resume=True,
          progress=False, echo=quiet)
    a, b = C.load_last(str(tmp_path / "whole")), C.load_last(str(tmp_path / "cut"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert evaluate_run(str(tmp_path / "whole"), device="cpu") == \
        evaluate_run(str(tmp_path / "cut"), device="cpu")
