"""The API-key file: one key per line. Read by `adamix-serve --api-key-file` and by the demo's client mode,
so this module imports nothing but the standard library and the error type."""

from __future__ import annotations

from pathlib import Path

from adamix_deploy.contracts.errors import AdamixError


class APIKeyFileError(AdamixError):
    """The key file cannot be read or holds no key."""


def read_api_keys(path: str | Path) -> tuple[str, ...]:
    """One key per line; blank lines and ``#`` comments are skipped. The keys are never logged."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise APIKeyFileError(f"cannot read the API key file {path}: {e}") from e
    keys = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise APIKeyFileError(f"the API key file {path} holds no key")
    return keys
