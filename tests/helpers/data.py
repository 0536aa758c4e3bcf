"""Small data rows a tiny model can learn from, and writing them as TSV or CSV files."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "lovely", "superb", "fine", "excellent"]
NEGATIVE = ["bad", "awful", "poor", "dull", "terrible", "boring"]
FILLER = ["the", "film", "was", "plot", "acting", "really", "quite", "story", "a", "movie", "and", "it"]
FOODS = ["Italian", "French", "Chinese", "Indian"]
NAMES = ["The Vaults", "Blue Spice", "The Mill", "Zizzi", "Aromi"]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": str(label)})
    return rows


def e2e_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, food = rng.choice(NAMES), rng.choice(FOODS)
        rows.append({"mr": f"name[{name}], food[{food}]", "ref": f"{name} serves {food} food."})
    return rows


def similarity_rows(n: int, seed: int) -> list[dict]:
    """Pairs whose score (0-5) is how many positive words the second sentence shares with the first: a
    signal a tiny model can pick up, so the correlation means something."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        shared = rng.randint(0, 3)
        first = rng.sample(POSITIVE, 3)
        second = first[:shared] + ["plain"] * (3 - shared)
        rows.append(
            {"sentence1": " ".join(first), "sentence2": " ".join(second), "score": f"{shared * 5 / 3:.2f}"}
        )
    return rows


def write_table(path: Path, rows: list[dict], delimiter: str = "\t") -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path
