"""Data readers: formats, column detection, label checks, references, seeded subsets."""

from __future__ import annotations

import json

import pytest

from adamix_deploy.contracts.errors import DataError
from adamix_deploy.data import (
    group_references,
    label_set,
    read_classification,
    read_generation,
    read_rows,
    seeded_subset,
)

from helpers.data import write_table


def test_glue_style_tsv_keeps_quotes_and_detects_pairs(tmp_path):
    path = tmp_path / "rte.tsv"
    path.write_text('index\tsentence1\tsentence2\tlabel\n0\tHe said "hi".\tHe spoke.\tentailment\n')
    (example,) = read_classification(path)
    assert example.text == 'He said "hi".' and example.text_pair == "He spoke." and example.label == "entailment"


def test_csv_and_jsonl_classification(tmp_path):
    csv_path = write_table(tmp_path / "a.csv", [{"text": "fine, really", "label": "pos"}], delimiter=",")
    assert read_classification(csv_path)[0].text == "fine, really"
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"premise": "p", "hypothesis": "h", "label": 1}) + "\n\n")
    (example,) = read_classification(jsonl)
    assert (example.text, example.text_pair, example.label) == ("p", "h", "1")


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("sentence\tlabel\n", ".tsv", "no examples"),
        ("sentence\tlabel\nonly one column\n", ".tsv", "expected 2 columns"),
        ('{"text": "x", "label": 1}\n{broken\n', ".jsonl", ":2: not valid JSON"),
        ("[1, 2]\n", ".jsonl", "each line must be a JSON object"),
        ("a,b\n", ".txt", "unsupported file type"),
        ("review\tlabel\nx\t1\n", ".tsv", "no text column: expected one of sentence"),
        ("sentence\tlabel\nx\t\n", ".tsv", "empty label"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_classification(path)


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.tsv")
    (tmp_path / "bin.tsv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="cannot read"):
        read_rows(tmp_path / "bin.tsv")


def test_labels_outside_the_training_set_are_rejected(tmp_path):
    path = write_table(tmp_path / "dev.tsv", [{"sentence": "a", "label": "0"}, {"sentence": "b", "label": "7"}])
    with pytest.raises(DataError, match="example 2 has label '7', not in the label set"):
        read_classification(path, labels=["0", "1"])


def test_label_set_order_and_minimum(tmp_path):
    rows = [{"sentence": str(i), "label": label} for i, label in enumerate(["10", "2", "1"])]
    assert label_set(read_classification(write_table(tmp_path / "n.tsv", rows))) == ["1", "2", "10"]
    one = write_table(tmp_path / "one.tsv", [{"sentence": "x", "label": "a"}])
    with pytest.raises(DataError, match="at least 2 labels"):
        label_set(read_classification(one))


def test_e2e_and_webnlg_generation_formats(tmp_path):
    e2e = write_table(
        tmp_path / "e2e.csv",
        [
            {"mr": "name[A], food[Thai]", "ref": "A serves Thai food."},
            {"mr": "name[A], food[Thai]", "ref": "Thai at A."},
        ],
        delimiter=",",
    )
    examples = read_generation(e2e)
    assert [e.target for e in examples] == ["A serves Thai food.", "Thai at A."]
    assert group_references(examples) == [("name[A], food[Thai]", ["A serves Thai food.", "Thai at A."])]
    web = tmp_path / "webnlg.jsonl"
    web.write_text(json.dumps({"triples": ["A | b | C", "C | d | E"], "lexs": ["one", "two"]}) + "\n")
    webnlg = read_generation(web)
    assert [(e.prompt, e.target) for e in webnlg] == [
        ("A | b | C ; C | d | E", "one"),
        ("A | b | C ; C | d | E", "two"),
    ]
    with pytest.raises(DataError, match="no prompt column"):
        read_generation(write_table(tmp_path / "x.csv", [{"q": "a", "target": "b"}], delimiter=","))


def test_seeded_subset_is_fixed_and_ordered():
    items = list(range(100))
    a, b = seeded_subset(items, 10, seed=3), seeded_subset(items, 10, seed=3)
    assert a == b == sorted(a) and len(a) == 10
    assert seeded_subset(items, 10, seed=4) != a
    assert seeded_subset(items, None, seed=0) is items
