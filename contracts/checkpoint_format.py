"""The mixture checkpoint's config: the contract between training (and the importers), which write it, and
`adamix-eval` and the exporters, which read it. Read and written only through `CheckpointConfig`.

    runs/x/
      adamix_config.json    `CheckpointConfig`: format, base model, task, labels, mixture spec, head, training
      mixture.safetensors   mixture and task-head weights only, never the frozen base
      tokenizer files       the tokenizer the model was trained with (special tokens included)
      training_state.*      optimizer, scheduler and RNG state of an unfinished run (for --resume)

No pickle anywhere. A leaf module like `export_folder`: no torch, no stage.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from adamix_deploy.contracts.errors import CheckpointError
from adamix_deploy.contracts.export_folder import BaseModelInfo
from adamix_deploy.contracts.tasks import TASKS

FORMAT = "adamix-mixture"
FORMAT_VERSION = 1
CONFIG_NAME = "adamix_config.json"
WEIGHTS_NAME = "mixture.safetensors"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


@dataclass(frozen=True)
class CheckpointConfig:
    base_model: BaseModelInfo  # the frozen model the mixture was trained on (a packaged name or a folder)
    task: str  # one of TASKS
    mixture: dict  # the training stage's MixtureSpec as a dict: what rebuilds the mixture modules
    head: list[str]  # the head parameters the weights file holds besides the mixture's
    labels: list[str] | None = None  # classification: the label of each logit, in order
    max_length: int = 128  # the training run's token limit
    prompt_template: str | None = None  # generation: how a prompt is laid out ({prompt} is replaced)
    data_columns: dict | None = None  # how the run read its labelled files (adamix-eval and parity reuse it)
    parameters: dict | None = None  # trainable, total, trainable_share
    training: dict | None = None  # the run's options, history and state; None for an imported checkpoint
    source_format: str = FORMAT  # adamix-mixture, or what an importer read (peft-lora, official-adamix-...)
    source_files: list[str] | None = None  # an import's files (what the export's source digest covers)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CheckpointError(f"checkpoint task {self.task!r} is not one of {', '.join(TASKS)}")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> CheckpointConfig:
        """Check the format, version and required fields; one error line names what is wrong."""
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{where}: unknown checkpoint format {data.get('format')!r}")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: format version {data['format_version']} is newer than this adamix-deploy reads "
                f"({FORMAT_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        missing = sorted(name for name in ("base_model", "task", "mixture", "head") if name not in data)
        if missing:
            raise CheckpointError(f"{where}: {CONFIG_NAME} lacks {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**{**values, "base_model": BaseModelInfo(**values["base_model"])})
        except TypeError as e:
            raise CheckpointError(f"{where}: {CONFIG_NAME}: {e}") from None


def read_checkpoint_config(folder: str | Path) -> CheckpointConfig:
    """The typed config of a checkpoint folder. Raises `CheckpointError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a mixture checkpoint (no {CONFIG_NAME})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: unknown checkpoint format None")
    return CheckpointConfig.from_dict(data, str(path))


def write_checkpoint_config(folder: Path, config: CheckpointConfig) -> None:
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2))
