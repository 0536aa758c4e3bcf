"""Where the demo's answers come from, behind one small interface (`Backend`):

* `inprocess_backend.InProcessBackend`: export folders run in this process by serving's runtime API
  (`ModelRuntime`, the code the server runs: same limits, same errors), without HTTP;
* `http_backend.HTTPBackend`: a running ``adamix-serve``, over its HTTP API (no onnxruntime, no FastAPI).

Both raise `DemoError` with one readable line; the page shows it as is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.serving.engine.results import Classification, Finished


class DemoError(AdamixError):
    """A request the demo could not answer; the message is what the user sees."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None  # None: a random seed per request


class Backend(Protocol):
    description: str

    def models(self) -> list[dict]:
        """Model cards (``GET /v1/models`` entries), known at start-up."""

    async def card(self, name: str) -> dict:
        """The current card of one model (providers are known once it is loaded)."""

    async def classify(self, name: str, text: str, pair: str | None = None) -> Classification: ...

    def generate_stream(self, name: str, prompt: str, sampling: Sampling) -> AsyncIterator[str | Finished]:
        """Text pieces as they are decoded, then one `Finished`."""
