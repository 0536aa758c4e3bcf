"""Atomic folder writes: build the whole folder under a temporary name beside the target, then rename.

An interrupted write leaves, at worst, a hidden ``.<name>.tmp-*`` folder that the next write removes; the
target itself is always either the complete old folder or the complete new one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _siblings(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def recover_interrupted_replace(target: Path) -> None:
    """Undo the effect of a crash between the two renames of ``atomic_directory``: restore the old folder
    if the new one never arrived, and drop leftover temporary folders."""
    if not target.exists():
        old = _siblings(target, "old")
        if old:
            old[-1].rename(target)
    for leftover in _siblings(target, "tmp") + _siblings(target, "old"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds it replaces ``target`` in one rename
    (two when an older ``target`` exists: old aside, new in, old removed). On error nothing changes."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_replace(target)
    token = uuid.uuid4().hex[:8]
    tmp = target.parent / f".{target.name}.tmp-{token}"
    tmp.mkdir()
    try:
        yield tmp
        for path in tmp.rglob("*"):  # data on disk before the rename makes it visible
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        if target.exists():
            old = target.parent / f".{target.name}.old-{token}"
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
