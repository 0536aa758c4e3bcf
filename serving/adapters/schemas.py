"""The wire format of the adapter routes (`adamix_deploy.serving.adapters.routes`): loading an onnxruntime LoRA
adapter of a base folder, and the answer to unloading one (a loaded adapter is answered with the native
`ModelCard`). Unknown fields are refused (422), as on every API (`Strict`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from adamix_deploy.contracts.export_folder import ADAPTER_NAME_PATTERN
from adamix_deploy.serving.http.schemas import Strict


class LoadAdapterRequest(Strict):
    path: str = Field(description="An adapter folder on the server (written by adamix-export --adapter-of).")
    name: str | None = Field(
        None,
        pattern=ADAPTER_NAME_PATTERN,
        description="The model name to serve it under (default: the adapter's).",
    )
    base: str | None = Field(None, description="The base it runs on; may be left out when there is one base.")


class UnloadAdapterResponse(BaseModel):
    id: str
    deleted: bool = True
    drained: bool = Field(description="Whether every request in flight on it finished before it was unloaded.")
