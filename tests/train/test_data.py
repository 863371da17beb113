"""rnnkit.data: files, tokenisation, vocabularies, CSV/TSV and CoNLL readers."""

import pytest

from rnnkit.train import data as D


def test_read_text_bundled_corpus():
    text = D.read_text(None)
    assert len(text.encode("utf-8")) == 1_115_394
    assert text.startswith("First Citizen:")


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"", "empty"),
                                              (b"  \n\n", "empty")])
def test_read_text_missing_or_empty(tmp_path, content, message):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(D.UserError, match=message):
        D.read_text(str(path))


def test_read_text_folder(tmp_path):
    with pytest.raises(D.UserError, match="folder"):
        D.read_text(str(tmp_path))


def test_not_utf8_says_where(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nsecond caf\u00e9\n".encode("latin-1"))
    with pytest.raises(D.UserError) as e:
        D.read_text(str(path))
    msg = str(e.value)
    assert "line 2, column 11" in msg and "0xe9" in msg and "\n" not in msg


def test_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhello".encode("utf-8"))
    assert D.read_text(str(path)) == "hello"


def test_vocab_roundtrip_and_unknown():
    v = D.Vocab.build("banana", specials=(D.PAD, D.UNK))
    assert v.itos == [D.PAD, D.UNK, "a", "b", "n"]
    assert v.decode(v.encode("nab")) == list("nab")
    assert v.index("z") == v.stoi[D.UNK]
    w = D.Vocab.from_json(v.to_json())
    assert w.itos == v.itos and w.stoi == v.stoi
    plain = D.Vocab.build("ab")
    with pytest.raises(KeyError):
        plain.index("z")
    with pytest.raises(D.UserError):
        D.Vocab.from_json({"itos": [1, 2]})


def test_tokenize():
    assert D.tokenize("Hello, World!", "word") == ["hello", ",", "world", "!"]
    assert D.tokenize("ab c", "char") == ["a", "b", " ", "c"]


def test_read_table_csv_and_tsv(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"good, very good",pos\nbad,neg\n\n')
    assert D.read_table(str(csv_path), "text", "label") == [("good, very good", "pos"),
                                                           ("bad", "neg")]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("id\tsentence\ty\n1\thi, there\ta\n2\tyo\tb\n")
    assert D.read_table(str(tsv_path), "sentence", "y") == [("hi, there", "a"), ("yo", "b")]


def test_read_table_missing_column_lists_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("review,stars\nnice,5\n")
    with pytest.raises(D.UserError) as e:
        D.read_table(str(path), "text", "stars")
    assert "'text'" in str(e.value) and "'review', 'stars'" in str(e.value)


def test_read_table_short_row_and_no_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,text,label\n1,x,y\n2,z\n")
    with pytest.raises(D.UserError, match="line 3"):
        D.read_table(str(path), "text", "label")
    path.write_text("text,label\n")
    with pytest.raises(D.UserError, match="no data rows"):
        D.read_table(str(path), "text", "label")


def test_read_conll(tmp_path):
    path = tmp_path / "d.conll"
    path.write_text("-DOCSTART- O\n\nJohn NNP B-PER\nruns VBZ O\n\n\nParis B-LOC\n")
    assert D.read_conll(str(path)) == [(["John", "runs"], ["B-PER", "O"]),
                                       (["Paris"], ["B-LOC"])]
    path.write_text("John B-PER\nlonely\n")
    with pytest.raises(D.UserError, match="line 2"):
        D.read_conll(str(path))


def test_split_train_valid():
    assert D.split_train_valid(100, 0.1) == 90
    assert D.split_train_valid(3, 0.1) == 2  # never leaves validation empty
    assert D.split_train_valid(3, 0.9) == 1  # never leaves training empty
