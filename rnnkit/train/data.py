"""Corpora and tokenisation: UTF-8 text, CSV/TSV tables, CoNLL-style tagged files, vocabularies.

Every problem with the user's files raises ``UserError`` with one line that names the file and,
where it helps, the line or byte at fault; the command line prints it without a traceback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Sequence

from .errors import UserError

#: Name used in messages and configs for the corpus shipped inside the package.
BUNDLED = "tinyshakespeare"

PAD = "<pad>"
UNK = "<unk>"


# ---- files ------------------------------------------------------------------------------------
def bundled_text_path() -> str:
    """Path of the bundled Tiny Shakespeare corpus (1,115,394 bytes, public domain)."""
    return str(resources.files("rnnkit") / "data" / "tinyshakespeare.txt")


#: Size and SHA-256 of every file read_bytes has read in this process, by absolute path: a run
#: records those of its data, and eval / --resume compare (a pipe such as /dev/stdin cannot be
#: read twice, so the fingerprint is taken from the bytes the task itself read).
_FINGERPRINTS: dict[str, dict] = {}


def fingerprint(path: str) -> dict:
    """{"bytes": size, "sha256": hex digest} of ``path`` as read (read_bytes) in this process."""
    key = os.path.abspath(path)
    if key not in _FINGERPRINTS:
        read_bytes(path)
    return _FINGERPRINTS[key]


def read_bytes(path: str) -> bytes:
    """The bytes of ``path``; UserError if it is missing, a folder, unreadable or empty."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, expected a file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not raw.strip():
        raise UserError(f"{path}: the file is empty")
    _FINGERPRINTS[os.path.abspath(path)] = {"bytes": len(raw),
                                            "sha256": hashlib.sha256(raw).hexdigest()}
    return raw


def decode_utf8(raw: bytes, path: str) -> str:
    """Decode UTF-8 (a leading BOM is dropped); UserError naming line, column and byte offset."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"{path}: not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line}, "
                        f"column {col} (byte offset {e.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | None) -> str:
    """The UTF-8 text of ``path``, or of the bundled corpus when ``path`` is None."""
    path = path or bundled_text_path()
    return decode_utf8(read_bytes(path), path)


# ---- vocabularies -------------------------------------------------------------------------------
@dataclass
class Vocab:
    """A list of symbols (characters, words or tags) and their indices."""

    itos: list[str]  # index -> symbol; specials (if any) first

    def __post_init__(self) -> None:
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def index(self, symbol: str) -> int:
        """Index of ``symbol``; the <unk> index for unknown symbols when the vocabulary has one."""
        i = self.stoi.get(symbol)
        if i is None:
            if UNK in self.stoi:
                return self.stoi[UNK]
            raise KeyError(symbol)
        return i

    def encode(self, symbols: Iterable[str]) -> list[int]:
        return [self.index(s) for s in symbols]

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in indices]

    def to_json(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_json(cls, data: dict) -> "Vocab":
        itos = data.get("itos") if isinstance(data, dict) else None
        if not isinstance(itos, list) or not all(isinstance(s, str) for s in itos):
            raise UserError("vocabulary: expected {'itos': [strings]}")
        return cls(list(itos))

    @classmethod
    def build(cls, symbols: Iterable[str], specials: Sequence[str] = (), min_count: int = 1
              ) -> "Vocab":
        """Specials first, then the symbols seen at least ``min_count`` times, sorted."""
        counts = Counter(symbols)
        rest = sorted(s for s, c in counts.items() if c >= min_count and s not in specials)
        return cls([*specials, *rest])


def tokenize(text: str, level: str) -> list[str]:
    """Split ``text`` into characters ("char") or lower-cased words and punctuation ("word")."""
    if level == "char":
        return list(text)
    return re.findall(r"\w+|[^\w\s]", text.lower())


# ---- tables (CSV / TSV) -------------------------------------------------------------------------
def read_table(path: str, text_column: str, label_column: str,
               hint: str = "choose with --text-column / --label-column"
               ) -> list[tuple[str, str]]:
    """(text, label) rows of a CSV or TSV file with a header line.

    The delimiter is a tab for ``.tsv``/``.tab`` files, otherwise sniffed among comma, tab,
    semicolon. UserError when a named column is missing (listing the columns there are), when a
    row is short, or when there are no rows.
    """
    text = decode_utf8(read_bytes(path), path)
    if path.lower().endswith((".tsv", ".tab")):
        delimiter = "\t"
    else:
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",\t;").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    # Python's csv refuses fields over 128 KiB by default; a long document is a fair text
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise UserError(f"{path}: the file is empty") from None
    except csv.Error as e:
        raise UserError(f"{path}: line {reader.line_num}: not CSV ({e})") from None
    missing = [c for c in (text_column, label_column) if c not in header]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise UserError(f"{path}: no column {names}; the columns are: "
                        + ", ".join(repr(h) for h in header)
                        + f" ({hint})")
    ti, li = header.index(text_column), header.index(label_column)
    rows = []
    while True:
        start = reader.line_num + 1  # the line a row starts on (quoted fields may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise UserError(f"{path}: line {start}: not CSV ({e})") from None
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ti, li):
            raise UserError(f"{path}: line {start} has {len(row)} field(s), expected "
                            f"{len(header)}")
        if not row[li].strip():
            raise UserError(f"{path}: line {start}: the {label_column!r} cell is empty "
                            "(every row needs a label)")
        rows.append((row[ti], row[li].strip()))
    if not rows:
        raise UserError(f"{path}: no data rows after the header")
    return rows


# ---- CoNLL ------------------------------------------------------------------------------------
def read_conll(path: str) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL-style file: "token<whitespace>tag" per line, a blank line between
    sentences; lines starting with ``-DOCSTART-`` are skipped. With more than two columns, the
    first is the token and the last the tag."""
    text = decode_utf8(read_bytes(path), path)
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise UserError(f"{path}: line {n}: expected a token and a tag, got {line.strip()!r}")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise UserError(f"{path}: no sentences found")
    return sentences


def split_train_valid(n: int, valid_fraction: float) -> int:
    """Index where the validation part starts: the first (1 - valid_fraction) go to training."""
    return max(1, min(n - 1, int(round(n * (1.0 - valid_fraction)))))
