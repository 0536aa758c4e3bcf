"""The export folder: the one contract between the exporter, which writes it, and the server, the demo and the
quickstart, which read it. Every file name, task, precision and default of the format is defined here and
nowhere else; readers go through `read_manifest` and the typed `Manifest`, never through the raw JSON.

    deploy/x/
      model.onnx             fp32, onnxruntime transformer fusions applied (generation: with key/value cache)
      model_int8.onnx        --quantize int8 (CPU: dynamic int8 for encoders, weight-only int8 for decoders)
      model_int4.onnx        --quantize int4 (CPU, decoders: weight-only int4)
      model_fp16.onnx        --fp16 (GPU)
      model*.onnx.data       the weights of a graph written with external data (the model builder's)
      genai_config.json      decoders built by onnxruntime-genai's model builder: its config for model.onnx,
                             so the folder opens with onnxruntime_genai.Model(folder)
      config.json, tokenizer.json (+ tokenizer_config.json, generation_config.json, chat template)
      adamix_manifest.json   this module's `Manifest`
      merged/                merged PyTorch weights as a Hugging Face folder

A base for onnxruntime LoRA adapters (`adamix-export --adapter-of`) is the same folder without `merged/` or
reduced precisions: its `model.onnx` takes the LoRA and head tensors as inputs (`Manifest.adapter_base` lists
them, `labels` is None), and each adapter is a folder of its own that is added without touching the base:

      adapters/<name>/adapter.onnx_adapter    the tensors (onnxruntime's AdapterFormat)
      adapters/<name>/adapter_manifest.json   `AdapterManifest`: task, labels, merge, parity, source

A generation base whose adapters are LoRA on 3-D MatMuls also has a multi-adapter graph, in which each row of a
batch runs its own adapter; it reads the base graph's weights file, so model.onnx is then written with
external data:

      model.onnx.data                 the weights of both graphs
      model_multi_adapter.onnx        LoRA factors as stacks (slots x in x rank) and adapter_index, one slot per row

A leaf module: it imports neither torch nor onnxruntime nor any stage, so every stage may import it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.tasks import TASKS

MANIFEST_NAME = "adamix_manifest.json"
FORMAT = "adamix-export"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8", "int4")
QUANTIZED_PRECISIONS = ("int8", "int4")  # what --quantize writes (fp16 is --fp16)
ONNX_FILES = {
    "fp32": "model.onnx",
    "int8": "model_int8.onnx",
    "int4": "model_int4.onnx",
    "fp16": "model_fp16.onnx",
}
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
MODEL_CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
GENAI_CONFIG_FILE = "genai_config.json"
EXTERNAL_DATA_SUFFIX = ".data"  # model.onnx -> model.onnx.data
MERGED_FOLDER = "merged"
ADAPTERS_FOLDER = "adapters"
ADAPTER_FILE = "adapter.onnx_adapter"
ADAPTER_MANIFEST_NAME = "adapter_manifest.json"
ADAPTER_FORMAT = "adamix-onnx-adapter"
# the multi-adapter graph of a generation base: each LoRA input {m}.lora_a becomes {m}.lora_a.stack (every
# adapter's factors, one slot each) gathered by adapter_index (one slot per row of the batch)
MULTI_ADAPTER_FILE = "model_multi_adapter.onnx"
ADAPTER_INDEX_INPUT = "adapter_index"
ADAPTER_STACK_SUFFIX = ".stack"
# an adapter's name is a folder name and a model name in URLs: letters, digits, '.', '_', '-'
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A new adapter base's LoRA inputs: the family's default LoRA layers, or every linear layer of the body
ADAPTER_LORA_LAYERS = ("default", "all")


class ExportFolderError(AdamixError):
    """A folder that is not a readable export of this format; the message names the folder and what is wrong."""


@dataclass(frozen=True)
class SourceInfo:
    checkpoint: str  # absolute path it was exported from
    format: str  # adamix-mixture | peft-lora | official-adamix-...
    sha256: str  # over `files_hashed` (name and content), so a re-export of the same checkpoint is recognised
    files_hashed: list[str]


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    path: str | None = None
    model_type: str | None = None
    architecture: str | None = None


@dataclass(frozen=True)
class MixtureInfo:
    method: str
    experts: int
    share: str
    rank: int | None = None
    alpha: float | None = None
    bottleneck: int | None = None


@dataclass(frozen=True)
class OnnxInfo:
    opset: int
    onnxruntime_version: str
    models: dict[str, str]  # precision -> file name (ONNX_FILES), only those written
    fusions: dict[str, int] = field(default_factory=dict)
    with_past: bool = False  # generation graphs take and return the key/value cache
    quantization: dict[str, dict] = field(default_factory=dict)  # int8 / int4 -> the settings that wrote it
    # precision -> `ToolRecord` as a dict: the tool and options that wrote that file (empty in older manifests)
    tools: dict[str, dict] = field(default_factory=dict)
    # builder decoders: {"config": genai_config.json, "model": its ONNX file, "tokenizer": the tokenizer check}
    genai: dict | None = None

    def tool(self, precision: str) -> ToolRecord | None:
        record = self.tools.get(precision)
        return ToolRecord(**record) if record else None


@dataclass(frozen=True)
class ToolRecord:
    """What wrote one ONNX file: ``tool`` names it with its version ("onnxruntime-genai model builder 0.18.0",
    "torch.onnx.export (torch 2.13.0)"), ``options`` are the ones it was given."""

    tool: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterBaseInfo:
    """What makes a folder a base for adapters: the graph inputs an adapter feeds, and the graph's digest."""

    inputs: list[dict]  # exporters.ort_adapters.AdapterInput fields: name, kind, module, shape, transposed
    model_sha256: str  # of model.onnx (and its weights file): every adapter records the base it was made for
    # MULTI_ADAPTER_FILE when the base has one, else why not (None in both: a base written before them)
    multi_adapter_file: str | None = None
    multi_adapter_absent: str | None = None


@dataclass(frozen=True)
class Manifest:
    task: str  # one of TASKS
    labels: list[str] | None  # classification: the label of each logit, in order; regression: None
    prompt_template: str | None  # generation: how a prompt is laid out ({prompt} is replaced)
    max_length: int | None  # the training run's token limit
    base_model: BaseModelInfo
    mixture: MixtureInfo
    parameters: dict | None  # trainable / total parameter counts of the mixture
    merge_method: str  # average | delta-average | expert:i
    onnx: OnnxInfo
    parity: dict  # exporters.parity's report: reference, tolerance, per-stage figures
    source: SourceInfo
    export_seconds: float
    files: dict[str, int] = field(default_factory=dict)  # every file of the folder and its size in bytes
    # with --verify-file: the checkpoint's metrics on it under each routing (average = what this folder
    # serves, ensemble, random, each expert), so a user sees what the merge costs before deploying
    validation: dict | None = None
    adapter_base: AdapterBaseInfo | None = None  # set on a base for onnxruntime LoRA adapters

    def onnx_file(self, precision: str) -> str:
        """The ONNX file of that precision, or an error naming the ones this export has."""
        if precision not in self.onnx.models:
            have = ", ".join(self.onnx.models) or "none"
            raise ExportFolderError(f"no {precision} ONNX model in this export (it has: {have})")
        return self.onnx.models[precision]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> Manifest:
        """Check the format, version and every required field; one error line names what is missing."""
        if data.get("format") != FORMAT:
            raise ExportFolderError(f"{where}: {MANIFEST_NAME} is not an {FORMAT} manifest")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ExportFolderError(
                f"{where}: {MANIFEST_NAME} has format version {version!r}; this adamix-deploy reads version "
                f"{FORMAT_VERSION} (export the checkpoint again with this version's adamix-export)"
            )
        optional = {"files", "validation", "adapter_base"}
        missing = [f.name for f in fields(cls) if f.name not in optional and f.name not in data]
        if missing:
            raise ExportFolderError(f"{where}: {MANIFEST_NAME} lacks {', '.join(missing)}")
        if data["task"] not in TASKS:
            raise ExportFolderError(f"{where}: manifest task {data['task']!r} is not one of {', '.join(TASKS)}")
        if data["task"] == "classification" and not data.get("labels") and not data.get("adapter_base"):
            raise ExportFolderError(f"{where}: a classification manifest must list its labels")
        try:
            return cls(
                **{k: data[k] for k in ("task", "labels", "prompt_template", "max_length", "parameters")},
                base_model=_typed(BaseModelInfo, data["base_model"]),
                mixture=_typed(MixtureInfo, data["mixture"]),
                merge_method=data["merge_method"],
                onnx=_typed(OnnxInfo, data["onnx"]),
                parity=data["parity"],
                source=_typed(SourceInfo, data["source"]),
                export_seconds=data["export_seconds"],
                files=data.get("files") or {},
                validation=data.get("validation"),
                adapter_base=_typed(AdapterBaseInfo, data["adapter_base"]) if data.get("adapter_base") else None,
            )
        except (TypeError, AttributeError) as e:
            raise ExportFolderError(f"{where}: {MANIFEST_NAME} has a malformed field: {e}") from None


def _typed(kind: type, data: dict):
    """A nested section: unknown keys (written by a newer exporter) are ignored, missing required ones raise."""
    known = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class AdapterManifest:
    """One adapter of a base folder (``adapters/<name>/``): what it does and where it came from."""

    name: str
    task: str
    labels: list[str] | None
    prompt_template: str | None
    max_length: int | None
    mixture: MixtureInfo
    merge_method: str
    base_sha256: str  # the base's model.onnx this adapter was made and checked for
    ranks: dict[str, int]  # LoRA module -> rank of its tensors (``delta-average`` of M experts: M·r)
    parity: dict  # exporters.parity's report for this adapter on the base graph
    source: SourceInfo
    export_seconds: float

    def to_dict(self) -> dict:
        return {"format": ADAPTER_FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> AdapterManifest:
        if data.get("format") != ADAPTER_FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ExportFolderError(f"{where}: {ADAPTER_MANIFEST_NAME} is not an {ADAPTER_FORMAT} version "
                                    f"{FORMAT_VERSION} manifest")  # fmt: skip
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ExportFolderError(f"{where}: {ADAPTER_MANIFEST_NAME} lacks {', '.join(missing)}")
        if data["task"] not in TASKS:
            raise ExportFolderError(f"{where}: adapter task {data['task']!r} is not one of {', '.join(TASKS)}")
        try:
            return cls(
                **{f.name: data[f.name] for f in fields(cls) if f.name not in ("mixture", "source")},
                mixture=_typed(MixtureInfo, data["mixture"]),
                source=_typed(SourceInfo, data["source"]),
            )
        except (TypeError, AttributeError) as e:
            raise ExportFolderError(f"{where}: {ADAPTER_MANIFEST_NAME} has a malformed field: {e}") from None


def adapter_view(base: Manifest, adapter: AdapterManifest) -> Manifest:
    """The manifest an adapter is served under: its base's graph and files, its own task, labels, merge, parity
    and source."""
    return replace(
        base, task=adapter.task, labels=adapter.labels, prompt_template=adapter.prompt_template,
        max_length=adapter.max_length, mixture=adapter.mixture, parameters=None, merge_method=adapter.merge_method,
        parity=adapter.parity, source=adapter.source, export_seconds=adapter.export_seconds, validation=None,
    )  # fmt: skip


def read_adapter_manifest(folder: str | Path) -> AdapterManifest:
    """The typed manifest of one adapter folder (``<base>/adapters/<name>``). Raises `ExportFolderError`."""
    folder = Path(folder)
    data = read_json_object(folder, ADAPTER_MANIFEST_NAME, "is it an adapter folder written by adamix-export?")
    return AdapterManifest.from_dict(data, str(folder))


def read_manifest(folder: str | Path) -> Manifest:
    """The typed manifest of an export folder. Raises `ExportFolderError`."""
    folder = Path(folder)
    data = read_json_object(folder, MANIFEST_NAME, "is it a folder written by adamix-export?")
    return Manifest.from_dict(data, str(folder))


def read_json_object(folder: Path, name: str, hint: str = "") -> dict:
    """One of the folder's JSON files (the manifest, config.json, ...), or an error naming folder and file."""
    file = folder / name
    if not file.is_file():
        raise ExportFolderError(f"{folder}: {name} is missing" + (f" ({hint})" if hint else ""))
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportFolderError(f"{folder}: {name} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ExportFolderError(f"{folder}: {name} is not a JSON object")
    return data


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Record every file's size (the server refuses a truncated copy), then write the manifest."""
    manifest = replace(manifest, files=file_sizes(folder))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2))
    return manifest


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
