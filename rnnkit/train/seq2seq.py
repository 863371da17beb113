"""seq2seq: spell numbers out in English words, an encoder-decoder task on synthetic data.

    "4071" -> "four thousand seventy one"        "1000000" -> "one million"

Source: the digits of a number of 1 to ``--seq-len`` digits (default 6: 0..999,999; at most 9),
no leading zeros, one symbol per digit. The digit count is uniform, the digits too, except that
each digit after the first is 0 outright with probability 0.3: uniform digits alone make round
numbers (1,000, 100,000, 20,019) so rare that a model that gets 2,000 random numbers right may
still spell 100000 as "ten hundred thousand". Target: words, no "and", no hyphens, no commas:
zero..nineteen, twenty..ninety, hundred, thousand, million, then an end-of-sequence symbol.

Model: an encoder RNN reads the digits (packed, so padding never enters it); its final state,
both directions of each layer side by side if ``--bidirectional``, is the initial state of a
decoder RNN over the words; a linear layer maps the decoder's outputs to word scores. Training
uses teacher forcing (the decoder reads the gold previous word); evaluation decodes greedily.

Held-out numbers: ``VALID_SIZE`` distinct numbers of 3 or more digits drawn from a seed stream
of their own; training batches redraw any number that falls in that set, so no validation item
is ever trained on. The 100 numbers below 100 are training items only (holding some out would
take a large share of them).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from .data import Vocab
from .errors import UserError
from .models import LayerOptions, ModelSpec, make_layer
from .task import Batch, Task

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ("", "thousand", "million")  # one per group of three digits
MAX_DIGITS = 3 * len(SCALES)
PAD, BOS, EOS = 0, 1, 2  # special indices of both vocabularies (BOS, EOS: target only)
SOURCE = Vocab(["<pad>", *"0123456789"])
TARGET = Vocab(["<pad>", "<bos>", "<eos>", *ONES, *TENS[2:], "hundred", *SCALES[1:]])
VALID_SIZE = 2000
ZERO_RATE = 0.3  # chance that a digit after the first is drawn as 0 outright


def number_to_words(n: int) -> list[str]:
    """The English words of 0 <= n < 10**MAX_DIGITS: 4071 -> [four, thousand, seventy, one]."""
    if not 0 <= n < 10 ** MAX_DIGITS:
        raise ValueError(f"expected a number from 0 to {10 ** MAX_DIGITS - 1:,}, got {n:,}")
    if n == 0:
        return ["zero"]
    words: list[str] = []
    for power in reversed(range(len(SCALES))):
        group = n // 1000 ** power % 1000
        if group == 0:
            continue
        hundreds, rest = divmod(group, 100)
        if hundreds:
            words += [ONES[hundreds], "hundred"]
        if rest >= 20:
            words.append(TENS[rest // 10])
            rest %= 10
        if rest:
            words.append(ONES[rest])
        if SCALES[power]:
            words.append(SCALES[power])
    return words


def max_target_len(digits: int) -> int:
    """Words (end symbol included) of the longest spelling among numbers of ``digits`` digits."""
    return len(number_to_words(int("7" * digits))) + 1


def draw_numbers(n: int, max_digits: int, g: torch.Generator, min_digits: int = 1) -> Tensor:
    """(n,) int64: a digit count uniform in [min_digits, max_digits], then a number uniform among
    those with that many digits (0..9 for one digit), then each digit after the first set to 0
    with probability ZERO_RATE (so that round numbers such as 100,000 are not rare)."""
    digits = torch.randint(min_digits, max_digits + 1, (n,), generator=g)
    lo = torch.where(digits == 1, 0, 10 ** (digits - 1))
    span = 10 ** digits - lo
    numbers = lo + (torch.rand(n, dtype=torch.float64, generator=g) * span).long().clamp_max(
        span - 1)
    for k in range(max_digits - 1):  # 10**k: the digit k places from the right
        zero = (torch.rand(n, generator=g) < ZERO_RATE) & (k < digits - 1)
        numbers -= torch.where(zero, numbers // 10 ** k % 10 * 10 ** k, 0)
    return numbers


def encode_pairs(numbers: list[int]) -> Batch:
    """A padded batch: x (S, N) digits, y (T, N) words and EOS, lengths (N,) digits per number,
    target_lengths (N,) words + 1 per number. Padding positions hold PAD."""
    sources = [SOURCE.encode(str(n)) for n in numbers]
    targets = [TARGET.encode(number_to_words(n)) + [EOS] for n in numbers]
    x, lengths = _padded(sources)
    y, target_lengths = _padded(targets)
    return Batch(x, y, lengths=lengths, target_lengths=target_lengths,
                 tokens=int(lengths.sum() + target_lengths.sum()))


def _padded(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((int(lengths.max()), len(seqs)), PAD, dtype=torch.long)
    for j, s in enumerate(seqs):
        out[:len(s), j] = torch.tensor(s, dtype=torch.long)
    return out, lengths


def decoder_inputs(y: Tensor) -> Tensor:
    """Teacher forcing: the decoder reads BOS, then the gold words shifted by one. y: (T, N)."""
    return torch.cat([torch.full_like(y[:1], BOS), y[:-1]])


def length_mask(lengths: Tensor, steps: int) -> Tensor:
    """(steps, N) bool: True where the step is inside the sequence."""
    return torch.arange(steps).unsqueeze(1) < lengths.cpu().unsqueeze(0)


# ---- the model --------------------------------------------------------------------------------
class Seq2Seq(nn.Module):
    """Encoder RNN -> final state -> decoder RNN -> linear layer over the target vocabulary.

    The decoder has ``D * hidden_size`` units (D = 2 if bidirectional, else 1) and as many
    layers as the encoder: its initial state for layer k is the encoder's final state of layer
    k, both directions concatenated.
    """

    def __init__(self, spec: ModelSpec, cell: str, impl: str, hidden_size: int, num_layers: int,
                 embed_size: int, dropout: float, bidirectional: bool,
                 options: LayerOptions = LayerOptions()) -> None:
        super().__init__()
        self.spec = spec
        self.directions = 2 if bidirectional else 1
        between = dropout if num_layers > 1 else 0.0
        self.src_embed = nn.Embedding(spec.vocab_size, embed_size, padding_idx=PAD)
        self.encoder = make_layer(impl, cell, options, embed_size, hidden_size,
                                  num_layers=num_layers, dropout=between,
                                  bidirectional=bidirectional)
        self.tgt_embed = nn.Embedding(spec.output_size, embed_size, padding_idx=PAD)
        self.decoder = make_layer(impl, cell, options, embed_size, self.directions * hidden_size,
                                  num_layers=num_layers, dropout=between)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.directions * hidden_size, spec.output_size)

    def encode(self, src: Tensor, lengths: Tensor):
        """src: (S, N) digits, lengths: (N,) -> the decoder's initial state (h, or (h, c)),
        each (layers, N, D * hidden_size)."""
        packed = pack_padded_sequence(self.drop(self.src_embed(src)), lengths.cpu(),
                                      enforce_sorted=False)
        _, state = self.encoder(packed)
        if self.directions == 1:
            return state

        def join(h: Tensor) -> Tensor:  # (layers * 2, N, H) -> (layers, N, 2H)
            layers2, n, hidden = h.shape
            return h.view(layers2 // 2, 2, n, hidden).transpose(1, 2).reshape(
                layers2 // 2, n, 2 * hidden)

        return tuple(join(s) for s in state) if isinstance(state, tuple) else join(state)

    def decode(self, tgt_in: Tensor, state):
        """tgt_in: (T, N) words -> (scores (T, N, V), state after the last step)."""
        out, state = self.decoder(self.drop(self.tgt_embed(tgt_in)), state)
        return self.head(self.drop(out)), state

    def forward(self, src: Tensor, lengths: Tensor, tgt_in: Tensor):
        """Teacher-forced scores (T, N, V) of the words following each of ``tgt_in``."""
        scores, _ = self.decode(tgt_in, self.encode(src, lengths))
        return scores


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: Tensor, lengths: Tensor, max_len: int) -> Tensor:
    """(N, max_len) word indices: the likeliest word at each step given the words chosen so
    far, up to and including EOS, then PAD. src: (S, N), lengths: (N,)."""
    state = model.encode(src, lengths)
    n = src.shape[1]
    word = torch.full((1, n), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(n, dtype=torch.bool, device=src.device)
    out = torch.full((n, max_len), PAD, dtype=torch.long, device=src.device)
    for t in range(max_len):
        scores, state = model.decode(word, state)
        scores = scores[-1]
        scores[:, [PAD, BOS]] = float("-inf")  # never targets
        best = scores.argmax(-1).masked_fill(done, PAD)
        out[:, t] = best
        done |= best == EOS
        if bool(done.all()):
            break
        word = best.view(1, n)
    return out


def words_of(indices: Tensor) -> list[str]:
    """The words of one decoded row, up to (not including) EOS."""
    words = []
    for i in indices.tolist():
        if i == EOS:
            break
        words.append(TARGET.itos[i])
    return words


# ---- the task ---------------------------------------------------------------------------------
class NumberWords(Task):
    """Numbers of 1 to ``config.seq_len`` digits -> their English words."""

    name = "seq2seq"

    def __init__(self, config, rank: int = 0, world: int = 1, meta: Optional[dict] = None):
        self.config, self.rank = config, rank
        self.digits = config.seq_len
        if not 3 <= self.digits <= MAX_DIGITS:
            raise UserError(f"--seq-len for --task seq2seq is the most digits of a number, from "
                            f"3 to {MAX_DIGITS}; got {self.digits}")
        if meta and (meta.get("source") != SOURCE.to_json()
                     or meta.get("target") != TARGET.to_json()):
            raise UserError("vocab.json: the run's vocabularies differ from this rnnkit's "
                            "seq2seq vocabularies (written by another version?)")
        self.meta = {"source": SOURCE.to_json(), "target": TARGET.to_json()}
        self.spec = ModelSpec(len(SOURCE), 0, len(TARGET), per_step=True, pad_index=PAD,
                              seq2seq=True)
        self.steps_per_epoch = 1000  # endless data; an "epoch" is 1000 steps
        self.max_len = max_target_len(self.digits) + 1  # one more: over-long outputs show
        eligible = 10 ** self.digits - 100  # numbers of 3 or more digits
        g = torch.Generator().manual_seed(config.seed * 7919 + 2)
        self.valid_numbers = self._distinct(min(VALID_SIZE, eligible // 10), g)
        self.valid = encode_pairs(self.valid_numbers.tolist())

    def _distinct(self, n: int, g: torch.Generator) -> Tensor:
        seen: dict[int, None] = {}
        while len(seen) < n:
            for v in draw_numbers(2 * n, self.digits, g, min_digits=3).tolist():
                seen.setdefault(v, None)
        return torch.tensor(list(seen)[:n], dtype=torch.long)

    def numbers(self, step: int) -> Tensor:
        """The training numbers of ``step``: a function of (seed, step, rank) alone, never in
        the validation set."""
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 64 + self.rank)
        n = draw_numbers(self.config.batch_size, self.digits, g)
        while True:
            held = torch.isin(n, self.valid_numbers)
            if not bool(held.any()):
                return n
            n[held] = draw_numbers(int(held.sum()), self.digits, g)

    def batch(self, step: int) -> Batch:
        return encode_pairs(self.numbers(step).tolist())

    def loss(self, model, batch: Batch, carry=None):
        return self._loss_sum(model, batch) / batch.target_lengths.sum(), None

    def _loss_sum(self, model, batch: Batch) -> Tensor:
        """Summed cross-entropy over the target words and EOS; padding positions are masked by
        the lengths, whatever they hold."""
        y = batch.y
        scores = model(batch.x, batch.lengths, decoder_inputs(y))
        every = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1),
                                reduction="none").view_as(y)
        mask = length_mask(batch.target_lengths, y.shape[0]).to(y.device)
        return (every * mask).sum()

    @torch.no_grad()
    def evaluate(self, model, device, data=None, chunk: int = 500) -> dict:
        """Teacher-forced loss per target word; greedy decoding: exact match (the whole output
        right) and token accuracy (gold words and EOS matched at their positions)."""
        if data is not None:
            raise UserError("--task seq2seq generates its data; eval takes no --data")
        total, exact, right = 0.0, 0, 0
        words = int(self.valid.target_lengths.sum())
        for i in range(0, len(self.valid_numbers), chunk):
            b = encode_pairs(self.valid_numbers[i:i + chunk].tolist())
            x, y = b.x.to(device), b.y.to(device)
            total += self._loss_sum(model, Batch(x, y, b.lengths, target_lengths=b.target_lengths)
                                    ).item()
            pred = greedy_decode(model, x, b.lengths, self.max_len).cpu()  # (N, max_len)
            gold = torch.full_like(pred, PAD)
            gold[:, :b.y.shape[0]] = b.y.t()
            inside = length_mask(b.target_lengths, self.max_len).t()
            right += int(((pred == gold) & inside).sum())
            exact += int((pred == gold).all(1).sum())
        n = len(self.valid_numbers)
        return {"loss": total / words, "exact_match": exact / n, "token_accuracy": right / words,
                "examples": n}

    def translate(self, model, device, prompt: str) -> list[tuple[str, str]]:
        """(number, the model's words) for each whitespace-separated number in ``prompt``."""
        numbers = []
        for text in prompt.split() or [prompt]:
            if not (text.isascii() and text.isdigit()):
                raise UserError(f"--prompt: expected numbers written in digits 0-9, got {text!r}")
            number = str(int(text))  # leading zeros dropped, as in training
            if len(number) > self.digits:
                raise UserError(f"--prompt: the run spells numbers of at most {self.digits} "
                                f"digits, got {number} ({len(number)} digits)")
            numbers.append(number)
        b = encode_pairs([int(n) for n in numbers])
        pred = greedy_decode(model, b.x.to(device), b.lengths, self.max_len).cpu()
        return [(n, " ".join(words_of(row))) for n, row in zip(numbers, pred)]
