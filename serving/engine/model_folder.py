"""One export folder, read for serving: manifest, tokenizer, limits, and the ONNX Runtime session.

Checking (`read_model_folder`) is separate from loading (`ServedModel.load`): the server checks every folder
before it binds its port, so a broken folder stops it with one clear line; sessions are opened and warmed
afterwards, while ``/health`` already answers and ``/ready`` says "loading".
Nothing here imports torch or transformers: the folder's ``tokenizer.json`` is read by the ``tokenizers``
library and the model runs in onnxruntime.

Adapters of a base open its graph once. A generation base with a multi-adapter graph opens that one instead and
puts each adapter's factors in a slot of its `AdapterStack`, so rows of different adapters share a call; any
other base keeps one onnxruntime adapter (`ActiveAdapter`, run options) per adapter, one adapter per call.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import (
    ADAPTER_FILE,
    ADAPTERS_FOLDER,
    CHAT_TEMPLATE_FILE,
    EXTERNAL_DATA_SUFFIX,
    GENERATION_CONFIG_FILE,
    MODEL_CONFIG_FILE,
    MULTI_ADAPTER_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    ExportFolderError,
    Manifest,
    adapter_view,
    read_adapter_manifest,
    read_json_object,
    read_manifest,
)
from adamix_deploy.contracts.tasks import SEQUENCE_TASKS
from adamix_deploy.serving.engine.adapter_stack import AdapterStack, read_factors
from adamix_deploy.serving.engine.cache_layout import CacheLayout
from adamix_deploy.serving.engine.onnx_loops import ActiveAdapter, classify_logits, greedy_generate, open_session
from adamix_deploy.serving.engine.text import encode_for_classification, pad_batch

log = logging.getLogger("adamix.serve")
_BASE_LOAD = threading.Lock()  # adapters loading at once open their shared base graph once


class ModelFolderError(AdamixError):
    """An export folder the server cannot serve; the message names the folder and the problem."""


@dataclass
class ServedModel:
    name: str
    path: Path
    manifest: Manifest
    config: dict
    onnx_file: str
    tokenizer: Tokenizer
    truncating_tokenizer: Tokenizer
    max_tokens: int  # the model's position limit: inputs (classification) or prompt + new tokens (generation)
    pad_token_id: int
    eos_token_ids: frozenset[int] = frozenset()
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    session: ort.InferenceSession | None = None
    providers: list[str] = field(default_factory=list)
    load_seconds: float | None = None
    # an onnxruntime adapter (LoRA or bottleneck) of a base folder: it runs the base's session with it active
    base: ServedModel | None = None
    adapter_file: Path | None = None
    active_adapter: ActiveAdapter | None = None
    # a base whose onnx_file is its multi-adapter graph: every adapter's factors, one slot each (set by load)
    stack: AdapterStack | None = None

    @property
    def is_adapter_base(self) -> bool:
        """A base graph for adapters: not served itself (a classifier base has no head), its adapters are."""
        return self.manifest.adapter_base is not None and self.base is None

    @property
    def adapter_stack(self) -> AdapterStack | None:
        """The stack this adapter has a slot in: its rows share calls with its base's other adapters."""
        return self.base.stack if self.base is not None else None

    @property
    def run_options(self) -> ort.RunOptions | None:
        return self.active_adapter.run_options if self.active_adapter else None

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels or [])

    @property
    def prompt_template(self) -> str | None:
        return self.manifest.prompt_template

    def load(self, threads: int | None, gpu: bool) -> None:
        """Open the session (CUDA first when asked, CPU fallback) and run one warm-up call. An adapter opens its
        base's session (once for all its adapters) and loads its adapter file."""
        start = time.perf_counter()
        if self.base is not None:
            with _BASE_LOAD:
                if self.base.session is None:
                    self.base.load(threads, gpu)
            self.session, self.providers = self.base.session, self.base.providers
            try:
                if self.adapter_stack is not None:
                    self.adapter_stack.add(self.name, read_factors(self.adapter_file))
                else:
                    self.active_adapter = ActiveAdapter(self.adapter_file)
            except Exception as e:  # onnxruntime's own types; its message is what the user needs
                raise ModelFolderError(f"{self.path}: {ADAPTER_FILE} does not load in onnxruntime: {e}") from e
            try:
                self._warm_up()
            except Exception:
                self.unload()
                raise
            self.load_seconds = round(time.perf_counter() - start, 3)
            log.info("%s: adapter of %s loaded in %.2f s", self.name, self.base.name, self.load_seconds)
            return
        providers = ["CPUExecutionProvider"]
        if gpu:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            else:
                log.warning("%s: --gpu asked, but this onnxruntime has no CUDA provider; using CPU", self.name)
        try:
            self.session = open_session(self.path / self.onnx_file, threads=threads, providers=providers)
        except Exception as e:  # onnxruntime raises its own types; the message is what the user needs
            raise ModelFolderError(f"{self.path}: {self.onnx_file} does not load in onnxruntime: {e}") from e
        self.providers = self.session.get_providers()
        if self.onnx_file == MULTI_ADAPTER_FILE:
            self.stack = AdapterStack(self.manifest.adapter_base.inputs)
        if gpu and self.providers[0] != "CUDAExecutionProvider":
            log.warning("%s: CUDA was asked for but the session fell back to %s", self.name, self.providers[0])
        self._warm_up()
        self.load_seconds = round(time.perf_counter() - start, 3)
        log.info("%s: %s loaded on %s in %.2f s", self.name, self.onnx_file, self.providers[0], self.load_seconds)

    def unload(self) -> None:
        """An adapter on a stack gives its slot back; call it once no request runs on it."""
        if self.adapter_stack is not None:
            self.adapter_stack.remove(self.name)

    def _warm_up(self) -> None:
        """One real call, so the first request does not pay for onnxruntime's lazy initialisation."""
        if self.task in SEQUENCE_TASKS:
            items = encode_for_classification(
                self.tokenizer, self.truncating_tokenizer, ["warm up"], self.max_tokens, True
            )
            logits = classify_logits(self.session, pad_batch(items, self.pad_token_id), self.run_options)
            expected = len(self.labels) if self.task == "classification" else 1
            if logits.shape[-1] != expected and not self.is_adapter_base:
                raise ModelFolderError(
                    f"{self.path}: the model has {logits.shape[-1]} outputs but a {self.task} manifest with "
                    f"{len(self.labels)} labels needs {expected}"
                )
        else:
            prompt = self.tokenizer.encode("warm up").ids or [self.pad_token_id]
            stack = self.stack or self.adapter_stack
            if stack is None:
                greedy_generate(self.session, prompt, 2, None, self.run_options)
                return
            # the multi-adapter graph: one prefill with this adapter's slot (the base's: slot 0, no adapter)
            layout, names = CacheLayout.of(self.session), {i.name for i in self.session.get_inputs()}
            feed = {**layout.empty(), **layout.token_feed(np.asarray([prompt], dtype=np.int64), np.asarray([0]), 0),
                    **stack.row_inputs([self.name if self.base is not None else None])}  # fmt: skip
            self.session.run(["logits"], {k: v for k, v in feed.items() if k in names})

    def public_card(self) -> dict:
        """What ``GET /v1/models`` says about this model: taken from the manifest, never recomputed."""
        m = self.manifest
        return {
            "id": self.name,
            "object": "model",
            "owned_by": "adamix-deploy",
            "task": self.task,
            "labels": self.labels or None,
            "base_model": m.base_model.name,
            "method": m.mixture.method,
            "experts": m.mixture.experts,
            "merge_method": m.merge_method,
            "trainable_share": (m.parameters or {}).get("trainable_share"),
            "parity": m.parity,
            "onnx_file": self.onnx_file,
            "onnx_bytes": m.files.get(self.onnx_file),
            "max_tokens": self.max_tokens,
            "providers": self.providers,
            "ready": self.session is not None,
            "parent": self.base.name if self.base else None,  # an adapter's base (as vLLM lists LoRA modules)
        }


def read_model_folder(path: str | Path, precision: str = "fp32", name: str | None = None) -> ServedModel:
    """Check an export folder and read everything but the session. Raises `ModelFolderError`."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path}: not a folder")
    try:
        manifest = read_manifest(path)
    except ExportFolderError as e:
        raise ModelFolderError(str(e)) from None
    try:
        onnx_file = manifest.onnx_file(precision)
    except ExportFolderError as e:
        raise ModelFolderError(f"{path}: {e}") from None
    weights = onnx_file + EXTERNAL_DATA_SUFFIX  # a graph with external data (the model builder's) reads it
    external = [weights] if weights in manifest.files or (path / weights).exists() else []
    multi = manifest.adapter_base.multi_adapter_file if manifest.adapter_base else None
    _check_files(path, manifest, [onnx_file, *external, *([multi] if multi else []), TOKENIZER_FILE,
                                  MODEL_CONFIG_FILE])  # fmt: skip
    if multi:
        onnx_file = multi  # its adapters run on the multi-adapter graph, which reads the base graph's weights
    config = _read_json(path, MODEL_CONFIG_FILE)
    tokenizer_config = _read_json(path, TOKENIZER_CONFIG_FILE) if (path / TOKENIZER_CONFIG_FILE).exists() else {}
    try:
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
        truncating = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    except Exception as e:
        raise ModelFolderError(f"{path}: {TOKENIZER_FILE} does not load: {e}") from e
    tokenizer.no_truncation()
    tokenizer.no_padding()
    truncating.no_padding()
    max_tokens = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    truncating.enable_truncation(max_tokens)
    pad_token_id = _token_id(tokenizer, tokenizer_config.get("pad_token"), config.get("pad_token_id"))
    eos = _eos_ids(path, config, tokenizer, tokenizer_config)
    if pad_token_id is None:
        pad_token_id = min(eos) if eos else 0
    chat_template = tokenizer_config.get("chat_template")
    if (path / CHAT_TEMPLATE_FILE).exists():
        chat_template = (path / CHAT_TEMPLATE_FILE).read_text()
    specials = {
        key: _token_text(tokenizer_config.get(key))
        for key in ("bos_token", "eos_token")
        if _token_text(tokenizer_config.get(key))
    }
    return ServedModel(
        name=name or path.resolve().name,
        path=path,
        manifest=manifest,
        config=config,
        onnx_file=onnx_file,
        tokenizer=tokenizer,
        truncating_tokenizer=truncating,
        max_tokens=max_tokens,
        pad_token_id=pad_token_id,
        eos_token_ids=frozenset(eos),
        chat_template=chat_template if isinstance(chat_template, str) else None,
        special_tokens=specials,
    )


def read_adapter_folders(base: ServedModel) -> list[ServedModel]:
    """Every adapter under ``base``'s ``adapters/`` folder, checked (`read_adapter`), in name order."""
    folder = base.path / ADAPTERS_FOLDER
    return [read_adapter(base, f) for f in sorted(folder.iterdir()) if f.is_dir()] if folder.is_dir() else []


def read_adapter(base: ServedModel, folder: str | Path, name: str | None = None) -> ServedModel:
    """An adapter folder (``adapters/<name>/`` of ``base``, or one anywhere on the server), checked against
    its base before anything loads: made for this base graph, a task it can serve, and an adapter file whose
    tensors are the base's inputs with shapes it takes. Raises `ModelFolderError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: not a folder")
    try:
        adapter = read_adapter_manifest(folder)
    except ExportFolderError as e:
        raise ModelFolderError(str(e)) from None
    info = base.manifest.adapter_base
    if adapter.base_sha256 != info.model_sha256:
        raise ModelFolderError(f"{folder}: this adapter was made for another base graph, not {base.name}'s")
    if (adapter.task in SEQUENCE_TASKS) != (base.task in SEQUENCE_TASKS):
        raise ModelFolderError(f"{folder}: a {adapter.task} adapter cannot run on {base.name}, a {base.task} base")
    _check_adapter_tensors(folder, info.inputs, adapter.task, adapter.labels)
    return replace(
        base, name=name or adapter.name, path=folder, manifest=adapter_view(base.manifest, adapter), session=None,
        providers=[], load_seconds=None, base=base, adapter_file=folder / ADAPTER_FILE, active_adapter=None,
        stack=None,
    )  # fmt: skip


def _check_adapter_tensors(folder: Path, inputs: list[dict], task: str, labels: list[str] | None) -> None:
    """The adapter file reads, every tensor is a base input of a shape it takes, LoRA pairs share a rank, and a
    classifier head has one output per label."""
    try:
        tensors = read_factors(folder / ADAPTER_FILE)
    except Exception as e:  # a missing, truncated or foreign file
        raise ModelFolderError(f"{folder}: {ADAPTER_FILE} does not read as an onnxruntime adapter: {e}") from None
    by_name = {i["name"]: i for i in inputs}
    unknown = sorted(set(tensors) - set(by_name))
    if unknown:
        raise ModelFolderError(
            f"{folder}: {ADAPTER_FILE} has tensor {unknown[0]!r}, which the base graph does not take"
        )
    axes: dict[str, int] = {}
    for name, value in tensors.items():
        shape = by_name[name]["shape"]
        if value.ndim != len(shape):
            raise ModelFolderError(f"{folder}: {name} is {list(value.shape)}, the base takes {shape}")
        for size, want in zip(value.shape, shape, strict=True):
            if isinstance(want, int) and size != want:
                raise ModelFolderError(f"{folder}: {name} is {list(value.shape)}, the base takes {shape}")
            if isinstance(want, str) and axes.setdefault(want, size) != size:
                raise ModelFolderError(f"{folder}: {name} is {list(value.shape)}: its {want} axis differs from "
                                       f"the other tensors' ({axes[want]})")  # fmt: skip
    outputs = len(labels or []) if task == "classification" else 1
    if task in SEQUENCE_TASKS and axes.get("labels", outputs) != outputs:
        raise ModelFolderError(
            f"{folder}: the adapter's head has {axes['labels']} outputs, its task needs {outputs}"
        )


def _read_json(folder: Path, name: str) -> dict:
    try:
        return read_json_object(folder, name)
    except ExportFolderError as e:
        raise ModelFolderError(str(e)) from None


def _check_files(folder: Path, manifest: Manifest, required: list[str]) -> None:
    """Every file the server reads must exist with the size the manifest recorded: a truncated copy or a
    half-synced folder is refused here, not discovered on the first request."""
    sizes = manifest.files
    for name in required:
        file = folder / name
        if not file.is_file():
            raise ModelFolderError(f"{folder}: {name} is missing")
        recorded = sizes.get(name)
        if recorded is not None and file.stat().st_size != recorded:
            raise ModelFolderError(
                f"{folder}: {name} is {file.stat().st_size} bytes but the manifest recorded {recorded} "
                "(a truncated or replaced file?)"
            )


def _token_text(token) -> str | None:
    if isinstance(token, dict):  # an AddedToken serialised by transformers
        return token.get("content")
    return token if isinstance(token, str) else None


def _token_id(tokenizer: Tokenizer, token, fallback) -> int | None:
    text = _token_text(token)
    if text is not None and tokenizer.token_to_id(text) is not None:
        return tokenizer.token_to_id(text)
    return fallback if isinstance(fallback, int) else None


def _eos_ids(folder: Path, config: dict, tokenizer: Tokenizer, tokenizer_config: dict) -> set[int]:
    """End-of-sequence ids: generation_config.json first (what `generate` would use), then config.json,
    then the tokenizer's eos token."""
    for source in (folder / GENERATION_CONFIG_FILE, None):
        data = config if source is None else (json.loads(source.read_text()) if source.exists() else {})
        value = data.get("eos_token_id")
        if isinstance(value, int):
            return {value}
        if isinstance(value, list) and value:
            return {int(v) for v in value}
    eos = _token_id(tokenizer, tokenizer_config.get("eos_token"), None)
    return {eos} if eos is not None else set()
