"""Tasks: what the model reads, what it predicts, its loss and its metrics.

charlm    character-level language model on a UTF-8 text, contiguous streams (truncated BPTT)
classify  many-to-one classification of CSV/TSV rows (text column -> label column)
tag       many-to-many tagging of CoNLL-style files (token, tag)
adding    synthetic: sum of the two marked numbers of a sequence (regression)
copy      synthetic: remember a few symbols over a long delay, then repeat them
seq2seq   synthetic: spell a number out in words, encoder-decoder (seq2seq.py)

The interface they share is task.py's Task; registry.py builds one by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import data as D
from .errors import UserError
from .models import ModelSpec, detach_state
from .task import Batch, Task, macro_f1, permutation


# ---- charlm -----------------------------------------------------------------------------------
class CharLM(Task):
    name = "charlm"
    carries_state = True

    def __init__(self, config, rank: int = 0, world: int = 1, meta: Optional[dict] = None):
        self.config = config
        self.seq_len = config.seq_len
        text = D.read_text(config.data)
        where = config.data or f"the bundled corpus ({D.BUNDLED})"
        self.vocab = (D.Vocab.from_json(meta["vocab"]) if meta
                      else D.Vocab.build(text))
        ids = self._encode(text, where, strict=meta is None)
        cut = D.split_train_valid(len(ids), config.valid_fraction)
        self.train_ids, self.valid_ids = ids[:cut], ids[cut:]
        self.spec = ModelSpec(len(self.vocab), 0, len(self.vocab), per_step=True)
        self.meta = {"vocab": self.vocab.to_json()}
        streams = config.batch_size * world
        per_stream = (len(self.train_ids) - 1) // streams
        self.steps_per_epoch = per_stream // self.seq_len
        if len(self.valid_ids) < 2:
            raise UserError(
                f"the validation split is {len(self.valid_ids)} character(s) of {where}'s "
                f"{len(ids):,} (--valid-fraction {config.valid_fraction}); it needs at least 2: "
                "give a longer text or raise --valid-fraction")
        if self.steps_per_epoch < 1:
            raise UserError(
                f"--seq-len {self.seq_len} is longer than the data allows: {where} has "
                f"{len(ids):,} characters, {len(self.train_ids):,} for training, split into "
                f"{streams} streams of {per_stream:,}; lower --seq-len or --batch-size")
        usable = streams * per_stream
        xs = self.train_ids[:usable].view(streams, per_stream)
        ys = self.train_ids[1:usable + 1].view(streams, per_stream)
        self.x = xs[rank * config.batch_size:(rank + 1) * config.batch_size]
        self.y = ys[rank * config.batch_size:(rank + 1) * config.batch_size]

    @classmethod
    def vocabulary_only(cls, config, meta: dict) -> "CharLM":
        """The task of a saved run without its data: vocabulary and model spec, enough to
        sample (generate, inspect) when the training text has moved or was a pipe."""
        task = cls.__new__(cls)
        task.config, task.seq_len = config, config.seq_len
        task.vocab = D.Vocab.from_json(meta["vocab"])
        task.spec = ModelSpec(len(task.vocab), 0, len(task.vocab), per_step=True)
        task.meta = {"vocab": task.vocab.to_json()}
        return task

    def _encode(self, text: str, where: str, strict: bool) -> Tensor:
        try:
            return torch.tensor(self.vocab.encode(text), dtype=torch.long)
        except KeyError:
            if strict:
                raise
        known = [c for c in text if c in self.vocab.stoi]
        if len(known) < 2:
            raise UserError(f"{where}: fewer than two characters of the run's vocabulary")
        return torch.tensor(self.vocab.encode(known), dtype=torch.long)

    def batch(self, step: int) -> Batch:
        chunk = step % self.steps_per_epoch
        sl = slice(chunk * self.seq_len, (chunk + 1) * self.seq_len)
        x = self.x[:, sl].t().contiguous()
        y = self.y[:, sl].t().contiguous()
        return Batch(x, y, tokens=x.numel(), reset=chunk == 0)

    def loss(self, model, batch: Batch, carry=None):
        logits, hn = model(batch.x, hx=None if batch.reset else carry)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.y.reshape(-1))
        return loss, detach_state(hn)

    @torch.no_grad()
    def evaluate(self, model, device, data=None, streams: int = 64, chunk: int = 256) -> dict:
        """Loss over every character of the validation split (or of ``data``), with the hidden
        state carried along ``streams`` contiguous streams."""
        skipped = 0
        if data is not None:
            text = D.read_text(data)
            ids = self._encode(text, data, strict=False)
            skipped = len(text) - len(ids)
        else:
            ids = self.valid_ids
        n = len(ids) - 1
        streams = max(1, min(streams, n // 8))
        per = n // streams
        total, count = 0.0, 0

        def run(x: Tensor, y: Tensor) -> None:
            nonlocal total, count
            carry = None
            for s in range(0, x.shape[1], chunk):
                xb = x[:, s:s + chunk].t().contiguous().to(device)
                yb = y[:, s:s + chunk].t().contiguous().to(device)
                logits, carry = model(xb, hx=carry)
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1),
                                         reduction="sum").item()
                count += yb.numel()

        run(ids[:streams * per].view(streams, per), ids[1:streams * per + 1].view(streams, per))
        if streams * per < n:  # the tail that does not fill a stream
            run(ids[streams * per:n].view(1, -1), ids[streams * per + 1:n + 1].view(1, -1))
        loss = total / count
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                   "bpc": loss / math.log(2), "characters": count}
        if skipped:
            metrics["skipped_characters"] = skipped  # not in the run's vocabulary
        return metrics


# ---- classify ---------------------------------------------------------------------------------
def _split_rows(rows: list, config, path: str) -> tuple[list, list]:
    if config.valid_data:
        return rows, None
    order = permutation(len(rows), config.seed, -1).tolist()
    rows = [rows[i] for i in order]
    cut = D.split_train_valid(len(rows), config.valid_fraction)
    if len(rows) < 2:
        raise UserError(f"{path}: at least two examples are needed to split off validation")
    return rows[:cut], rows[cut:]


def _padded(seqs: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    x = torch.full((int(lengths.max()), len(seqs)), pad, dtype=torch.long)
    for j, s in enumerate(seqs):
        x[:len(s), j] = torch.tensor(s, dtype=torch.long)
    return x, lengths


class Classify(Task):
    name = "classify"

    def __init__(self, config, rank: int = 0, world: int = 1, meta: Optional[dict] = None):
        self.config, self.rank, self.world = config, rank, world
        path = config.data
        if not path:
            raise UserError("--task classify needs --data FILE (CSV or TSV with a header line)")
        rows = D.read_table(path, config.text_column, config.label_column)
        train_rows, valid_rows = _split_rows(rows, config, path)
        if valid_rows is None:
            valid_rows = D.read_table(config.valid_data, config.text_column, config.label_column)
        if meta:
            self.vocab = D.Vocab.from_json(meta["vocab"])
            self.labels = D.Vocab.from_json(meta["labels"])
        else:
            labels = {lab for _, lab in train_rows}
            if len(labels) < 2 and len({lab for _, lab in rows}) > 1:
                raise UserError(f"{path}: the training split holds only one label class "
                                f"({len(train_rows)} of {len(rows)} rows, with --valid-fraction "
                                f"{config.valid_fraction}); lower --valid-fraction")
            if len(labels) < 2:
                raise UserError(f"{path}: only one label class ({next(iter(labels))!r}) in "
                                  f"column {config.label_column!r}; classification needs two "
                                  "or more")
            self.labels = D.Vocab.build(lab for _, lab in rows + valid_rows)
            self.vocab = D.Vocab.build(
                (t for text, _ in train_rows for t in D.tokenize(text, config.tokens)),
                specials=(D.PAD, D.UNK))
        self.meta = {"vocab": self.vocab.to_json(), "labels": self.labels.to_json()}
        self.train = self._encode(train_rows, path)
        self.valid = self._encode(valid_rows, config.valid_data or path)
        self.spec = ModelSpec(len(self.vocab), 0, len(self.labels), per_step=False,
                              pad_index=self.vocab.stoi[D.PAD])
        self.local = list(range(rank, len(self.train), world))
        self.steps_per_epoch = max(1, math.ceil(len(self.local) / config.batch_size))

    def _encode(self, rows, path) -> list[tuple[list[int], int]]:
        out = []
        for text, label in rows:
            ids = self.vocab.encode(D.tokenize(text, self.config.tokens))[:self.config.seq_len]
            if label not in self.labels.stoi:
                raise UserError(f"{path}: label {label!r} was not seen in training; the labels "
                                  f"are: {', '.join(self.labels.itos)}")
            out.append((ids or [self.vocab.stoi[D.UNK]], self.labels.stoi[label]))
        return out

    def _make(self, items) -> Batch:
        x, lengths = _padded([s for s, _ in items], self.spec.pad_index)
        y = torch.tensor([lab for _, lab in items], dtype=torch.long)
        return Batch(x, y, lengths=lengths, tokens=int(lengths.sum()))

    def batch(self, step: int) -> Batch:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = permutation(len(self.local), self.config.seed, epoch)
        bs = self.config.batch_size
        return self._make([self.train[self.local[j]] for j in order[i * bs:(i + 1) * bs]])

    def loss(self, model, batch: Batch, carry=None):
        logits, _ = model(batch.x, lengths=batch.lengths)
        return F.cross_entropy(logits, batch.y), None

    def _predict(self, model, device, items) -> tuple[float, Tensor, Tensor]:
        total, preds, golds = 0.0, [], []
        for i in range(0, len(items), 256):
            b = self._make(items[i:i + 256])
            logits, _ = model(b.x.to(device), lengths=b.lengths)
            total += F.cross_entropy(logits, b.y.to(device), reduction="sum").item()
            preds.append(logits.argmax(-1).cpu())
            golds.append(b.y)
        return total / len(items), torch.cat(preds), torch.cat(golds)

    @torch.no_grad()
    def evaluate(self, model, device, data=None) -> dict:
        items = self.valid
        if data is not None:
            rows = D.read_table(data, self.config.text_column, self.config.label_column,
                                hint="the run reads the columns it was trained with")
            items = self._encode(rows, data)
        loss, pred, gold = self._predict(model, device, items)
        return {"loss": loss, "accuracy": (pred == gold).float().mean().item(),
                "macro_f1": macro_f1(pred, gold), "examples": len(items)}


# ---- tag --------------------------------------------------------------------------------------
class Tag(Classify):
    name = "tag"

    def __init__(self, config, rank: int = 0, world: int = 1, meta: Optional[dict] = None):
        self.config, self.rank, self.world = config, rank, world
        path = config.data
        if not path:
            raise UserError("--task tag needs --data FILE (CoNLL-style: token and tag per line)")
        sents = D.read_conll(path)
        train_s, valid_s = _split_rows(sents, config, path)
        if valid_s is None:
            valid_s = D.read_conll(config.valid_data)
        if meta:
            self.vocab = D.Vocab.from_json(meta["vocab"])
            self.labels = D.Vocab.from_json(meta["labels"])
        else:
            tags = {t for _, ts in train_s for t in ts}
            if len(tags) < 2 and len({t for _, ts in sents for t in ts}) > 1:
                raise UserError(f"{path}: the training split holds only one tag "
                                f"({len(train_s)} of {len(sents)} sentences, with "
                                f"--valid-fraction {config.valid_fraction}); lower "
                                "--valid-fraction")
            if len(tags) < 2:
                raise UserError(f"{path}: only one tag ({next(iter(tags))!r}); tagging needs "
                                  "two or more")
            self.labels = D.Vocab.build(t for _, ts in sents + valid_s for t in ts)
            self.vocab = D.Vocab.build((w for ws, _ in train_s for w in ws),
                                       specials=(D.PAD, D.UNK))
        self.meta = {"vocab": self.vocab.to_json(), "labels": self.labels.to_json()}
        self.train = self._encode(train_s, path)
        self.valid = self._encode(valid_s, config.valid_data or path)
        self.spec = ModelSpec(len(self.vocab), 0, len(self.labels), per_step=True,
                              pad_index=self.vocab.stoi[D.PAD])
        self.local = list(range(rank, len(self.train), world))
        self.steps_per_epoch = max(1, math.ceil(len(self.local) / config.batch_size))

    def _encode(self, sents, path):
        out = []
        for words, tags in sents:
            unknown = [t for t in tags if t not in self.labels.stoi]
            if unknown:
                raise UserError(f"{path}: tag {unknown[0]!r} was not seen in training; the tags "
                                  f"are: {', '.join(self.labels.itos)}")
            out.append((self.vocab.encode(words), self.labels.encode(tags)))
        return out

    def _make(self, items) -> Batch:
        x, lengths = _padded([s for s, _ in items], self.spec.pad_index)
        y, _ = _padded([t for _, t in items], -100)
        return Batch(x, y, lengths=lengths, tokens=int(lengths.sum()))

    def loss(self, model, batch: Batch, carry=None):
        logits, _ = model(batch.x, lengths=batch.lengths)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.y.reshape(-1),
                               ignore_index=-100), None

    def _predict(self, model, device, items):
        total, count, preds, golds = 0.0, 0, [], []
        for i in range(0, len(items), 256):
            b = self._make(items[i:i + 256])
            logits, _ = model(b.x.to(device), lengths=b.lengths)
            y = b.y.to(device).reshape(-1)
            flat = logits.reshape(-1, logits.shape[-1])
            total += F.cross_entropy(flat, y, ignore_index=-100, reduction="sum").item()
            keep = y != -100
            count += int(keep.sum())
            preds.append(flat.argmax(-1)[keep].cpu())
            golds.append(y[keep].cpu())
        return total / count, torch.cat(preds), torch.cat(golds)

    @torch.no_grad()
    def evaluate(self, model, device, data=None) -> dict:
        items = self.valid if data is None else self._encode(D.read_conll(data), data)
        loss, pred, gold = self._predict(model, device, items)
        return {"loss": loss, "accuracy": (pred == gold).float().mean().item(),
                "macro_f1": macro_f1(pred, gold), "tokens": int(gold.numel())}


# ---- synthetic --------------------------------------------------------------------------------
@dataclass
class _Synthetic(Task):
    config: Any = None
    rank: int = 0
    world: int = 1
    meta: dict = field(default_factory=dict)
    valid_size: int = 1024

    def __post_init__(self) -> None:
        if self.config.seq_len < 2:
            raise UserError(f"--seq-len must be at least 2 for --task {self.name}, got "
                              f"{self.config.seq_len}")
        self.steps_per_epoch = 1000  # the data are endless; an "epoch" is 1000 steps
        self.meta = {}
        g = torch.Generator().manual_seed(self.config.seed * 7919 + 1)
        self.valid = self.generate(self.valid_size, g)

    def batch(self, step: int) -> Batch:
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 64 + self.rank)
        return self.generate(self.config.batch_size, g)


class Adding(_Synthetic):
    """Inputs (T, N, 2): a number in [0, 1) and a marker; the target is the sum of the two
    marked numbers (one in each half). Predicting 1.0 always gives a mean squared error of 1/6."""

    name = "adding"

    def __post_init__(self) -> None:
        self.spec = ModelSpec(0, 2, 1, per_step=False)
        super().__post_init__()

    def generate(self, n: int, g: torch.Generator) -> Batch:
        T = self.config.seq_len
        values = torch.rand(T, n, generator=g)
        first = torch.randint(0, T // 2, (n,), generator=g)
        second = torch.randint(T // 2, T, (n,), generator=g)
        marks = torch.zeros(T, n)
        marks[first, torch.arange(n)] = 1.0
        marks[second, torch.arange(n)] = 1.0
        y = (values * marks).sum(0)
        return Batch(torch.stack([values, marks], -1), y, tokens=T * n)

    def loss(self, model, batch, carry=None):
        out, _ = model(batch.x)
        return F.mse_loss(out.squeeze(-1), batch.y), None

    @torch.no_grad()
    def evaluate(self, model, device, data=None) -> dict:
        if data is not None:
            raise UserError("--task adding generates its data; eval takes no --data")
        out, _ = model(self.valid.x.to(device))
        mse = F.mse_loss(out.squeeze(-1).cpu(), self.valid.y).item()
        return {"loss": mse, "mse": mse, "baseline_mse": F.mse_loss(
            torch.ones_like(self.valid.y), self.valid.y).item()}


class Copy(_Synthetic):
    """Inputs: ``COPY_LEN`` symbols from 1..8, ``seq_len`` blanks (0), a delimiter (9), then
    blanks; the target is blanks until the delimiter, then the symbols in order."""

    name = "copy"
    COPY_LEN = 10

    def __post_init__(self) -> None:
        self.spec = ModelSpec(10, 0, 9, per_step=True)
        super().__post_init__()

    def generate(self, n: int, g: torch.Generator) -> Batch:
        K, T = self.COPY_LEN, self.config.seq_len
        symbols = torch.randint(1, 9, (K, n), generator=g)
        x = torch.zeros(2 * K + T, n, dtype=torch.long)
        x[:K] = symbols
        x[K + T - 1] = 9
        y = torch.zeros_like(x)
        y[K + T:] = symbols
        return Batch(x, y, tokens=x.numel())

    def loss(self, model, batch, carry=None):
        logits, _ = model(batch.x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.y.reshape(-1)), None

    @torch.no_grad()
    def evaluate(self, model, device, data=None) -> dict:
        if data is not None:
            raise UserError("--task copy generates its data; eval takes no --data")
        logits, _ = model(self.valid.x.to(device))
        logits = logits.cpu()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               self.valid.y.reshape(-1)).item()
        K = self.COPY_LEN
        right = (logits[-K:].argmax(-1) == self.valid.y[-K:]).float().mean().item()
        baseline = K * math.log(8) / self.valid.x.shape[0]
        return {"loss": loss, "symbol_accuracy": right, "baseline_loss": baseline}
