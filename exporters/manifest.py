"""``adamix_manifest.json``: what an export folder holds and how it was verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_NAME = "adamix_manifest.json"
FORMAT = "adamix-export"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: Path, names: list[str]) -> str:
    """One digest over the named files of a folder (name and content), in name order."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0" + bytes.fromhex(sha256_file(folder / name)))
    return digest.hexdigest()


def file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def write_manifest(folder: Path, manifest: dict) -> dict:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    manifest["files"] = file_sizes(folder)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest
