"""Read labelled files: TSV, CSV or JSON lines, for classification and for generation.

Classification: a text column (``sentence``, ``text``, ``sentence1``, ``premise`` or ``question`` unless
named), an optional second text for pair tasks (``sentence2``, ``hypothesis``), and a ``label`` column.
Regression (STS-B): the same, with a numeric ``label`` or ``score`` column (GLUE's STS-B calls it ``score``).
Header-less TSVs (CoLA's train and dev): ``header=False`` names the columns by position, "0", "1", ...
Files may start with a UTF-8 byte-order mark, as some GLUE distributions do.
Generation: ``prompt`` and ``target`` columns, or the E2E csv (``mr``, ``ref``), or WebNLG JSON lines
(``triples`` -> each of ``lexs``). Every problem is a ``DataError`` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adamix_deploy.contracts.checkpoint_format import CheckpointConfig
from adamix_deploy.contracts.errors import DataError

TEXT_COLUMNS = ("sentence", "text", "sentence1", "premise", "question")
PAIR_COLUMNS = {"sentence1": "sentence2", "premise": "hypothesis", "question": "sentence"}
LABEL_COLUMNS = ("label",)
SCORE_COLUMNS = ("label", "score")  # regression

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    text_pair: str | None
    label: str


@dataclass(frozen=True)
class GenerationExample:
    prompt: str
    target: str


def read_rows(path: str | Path, header: bool = True) -> list[dict]:
    """Rows of a .tsv, .csv or .jsonl file as dicts keyed by the header (or JSON keys); without a header,
    keyed by column position ("0", "1", ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is not part of a name
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object")
            rows.append(row)
        return rows
    if suffix not in (".tsv", ".csv"):
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .tsv, .csv or .jsonl)")
    # GLUE TSVs contain bare quote characters inside sentences: TSV is read without quoting.
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    lines = text.splitlines()
    delimiter = "\t" if suffix == ".tsv" else ","
    names = None
    if not header:
        first = next(csv.reader(lines[:1], delimiter=delimiter, quoting=quoting), [])
        names = [str(i) for i in range(len(first))]
    reader = csv.DictReader(lines, fieldnames=names, delimiter=delimiter, quoting=quoting)
    rows = []
    for number, row in enumerate(reader, 2):
        if None in row or any(v is None for v in row.values()):
            raise DataError(
                f"{path}:{number}: expected {len(reader.fieldnames or [])} columns, found another count"
            )
        rows.append(row)
    return rows


def _pick_column(
    path: Path, columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str
) -> str:
    if wanted:
        if wanted not in columns:
            raise DataError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise DataError(
        f"{path}: no {what} column: expected one of {', '.join(candidates)} (columns: {', '.join(columns)})"
    )


def _nonempty(path: Path, rows: list[dict]) -> list[dict]:
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def read_classification(
    path: str | Path,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
    header: bool = True,
    regression: bool = False,
) -> list[ClassificationExample]:
    """Examples of a labelled file; with ``labels`` given, a label outside the set is an error. With
    ``regression``, every label must be a number. Columns not named are looked for by their usual names."""
    path = Path(path)
    rows = _nonempty(path, read_rows(path, header))
    columns = list(rows[0].keys())
    text_col = _pick_column(path, columns, text_column, TEXT_COLUMNS, "text")
    if pair_column is None and PAIR_COLUMNS.get(text_col) in columns:
        pair_column = PAIR_COLUMNS[text_col]
    if pair_column:
        _pick_column(path, columns, pair_column, (), "text pair")
    label_col = _pick_column(path, columns, label_column, SCORE_COLUMNS if regression else LABEL_COLUMNS, "label")
    allowed = set(labels) if labels is not None else None
    examples = []
    for number, row in enumerate(rows, 1):
        label = str(row[label_col]).strip()
        if label == "":
            raise DataError(f"{path}: example {number} has an empty label")
        if regression:
            try:
                float(label)
            except ValueError:
                raise DataError(
                    f"{path}: example {number} has label {label!r}, not a number (regression)"
                ) from None
        elif allowed is not None and label not in allowed:
            raise DataError(
                f"{path}: example {number} has label {label!r}, not in the label set {sorted(allowed)}"
            )
        text = str(row[text_col])
        pair = str(row[pair_column]) if pair_column else None
        examples.append(ClassificationExample(text, pair, label))
    return examples


def label_set(examples: Sequence[ClassificationExample]) -> list[str]:
    """Labels in a stable order: numerically when all labels are integers, else alphabetically."""
    found = {e.label for e in examples}
    if len(found) < 2:
        raise DataError(f"training data needs at least 2 labels, found {sorted(found)}")
    if all(label.lstrip("-").isdigit() for label in found):
        return sorted(found, key=int)
    return sorted(found)


def read_generation(
    path: str | Path, prompt_column: str | None = None, target_column: str | None = None
) -> list[GenerationExample]:
    """(prompt, target) pairs. A prompt with several references appears once per reference."""
    path = Path(path)
    rows = _nonempty(path, read_rows(path))
    columns = list(rows[0].keys())
    if not prompt_column and {"triples", "lexs"} <= set(columns):  # WebNLG JSON lines
        examples = []
        for row in rows:
            prompt = " ; ".join(row["triples"])
            examples.extend(GenerationExample(prompt, str(lex)) for lex in row["lexs"])
        return _nonempty_examples(path, examples)
    prompt_col = _pick_column(path, columns, prompt_column, ("prompt", "mr", "input", "source"), "prompt")
    target_col = _pick_column(path, columns, target_column, ("target", "ref", "output", "completion"), "target")
    examples = [
        GenerationExample(str(row[prompt_col]).strip(), str(row[target_col]).strip())
        for row in rows
        if str(row[prompt_col]).strip()
    ]
    return _nonempty_examples(path, examples)


def _nonempty_examples(path: Path, examples: list) -> list:
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def group_references(examples: Sequence[GenerationExample]) -> list[tuple[str, list[str]]]:
    """(prompt, [references]) in first-seen order: E2E and WebNLG list several references per input."""
    grouped: dict[str, list[str]] = {}
    for e in examples:
        grouped.setdefault(e.prompt, []).append(e.target)
    return list(grouped.items())


def seeded_subset(items: list, size: int | None, seed: int) -> list:
    """A fixed random subset (the same for the same seed and size), in the original order."""
    if size is None or size >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), size))
    return [items[i] for i in keep]


def read_like_checkpoint(path: str | Path, config: CheckpointConfig) -> list:
    """The examples of a labelled file, read as the checkpoint's training run read its files: same columns,
    header or not, label set or numeric labels (``adamix-eval``, the export's parity and routing figures)."""
    if config.task == "generation":
        return read_generation(path)
    columns = config.data_columns or {}
    regression = config.task == "regression"
    return read_classification(
        path, **columns, labels=None if regression else config.labels, regression=regression
    )
