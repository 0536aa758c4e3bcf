"""A report step's markdown: printed, and written into its page under docs/benchmarks/ between the markers

    <!-- report:begin NAME -->

    ...generated, replaced on every report...

    <!-- report:end NAME -->

so that a page's tables always come from its result files, while the prose around them (protocol, verdict,
caveats) is written by hand and kept."""

from __future__ import annotations

import re
from collections.abc import Iterable

from benchmarks.common.paths import DOCS


class Markdown:
    """Lines of markdown, built as a report prints them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        self.lines.extend(line.split("\n"))

    def table(self, header: Iterable[str], rows: Iterable[Iterable]) -> None:
        header = list(header)
        self(f"| {' | '.join(header)} |")
        self("|" + "---|" * len(header))
        for row in rows:
            self(f"| {' | '.join(str(cell) for cell in row)} |")

    @property
    def text(self) -> str:
        return "\n".join(self.lines).strip("\n") + "\n"


def publish(markdown: Markdown, page: str, block: str, write: bool = True) -> None:
    """Print the markdown; with ``write``, put it between the page's markers of ``block`` (which must exist)."""
    print(markdown.text)
    if not write:
        return
    path = DOCS / page
    text = path.read_text()
    begin, end = f"<!-- report:begin {block} -->", f"<!-- report:end {block} -->"
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no block {block!r}: put the lines {begin} and {end} where its tables go")
    path.write_text(pattern.sub(lambda _: f"{begin}\n\n{markdown.text}\n{end}", text, count=1))
    print(f"(tables written to {path.relative_to(DOCS.parent.parent)}, block {block})")
