"""The Triton model-repository writer behind `adamix-triton` (`adamix_deploy.serving.triton.cli`): an export
folder (classification or regression) -> a Triton Inference Server model repository.

Two layouts, both taking BYTES ``text`` (dims [1]: one text per batch row; a request with n texts has shape
[n, 1] and Triton's dynamic batcher merges requests along that first dimension) and returning ``label`` (BYTES
[1]) and ``scores`` (FP32 [num_labels], softmax), or ``score`` (FP32 [1]) for a regression export:

``--layout ensemble`` (the production / GPU layout; needs Triton's python and onnxruntime backends)::

    REPO/
      NAME/                 platform "ensemble": text -> NAME_tokenizer -> NAME_onnx -> NAME_postprocess
        config.pbtxt
        1/                  (empty: an ensemble has no files, but Triton wants a version folder)
      NAME_tokenizer/       backend "python", role tokenize (KIND_CPU)
        config.pbtxt
        1/model.py          serving/triton/python_backend/model.py
        1/tokenizer.json
      NAME_onnx/            backend "onnxruntime": the export's ONNX file with its own input names and types,
        config.pbtxt          INT64 [-1] inputs, FP32 [num_labels] logits (KIND_GPU or KIND_CPU per --kind)
        1/model.onnx
      NAME_postprocess/     backend "python", role postprocess (KIND_CPU)
        config.pbtxt
        1/model.py

``--layout python`` (needs only the Python backend): ``REPO/NAME/{config.pbtxt, 1/model.py, 1/model.onnx,
1/tokenizer.json}``, one model that tokenises and runs onnxruntime itself, over the whole dynamic batch.

Every model with a batch dimension has ``dynamic_batching { preferred_batch_size max_queue_delay_microseconds }``
(left out with ``--no-dynamic-batching``: each request then runs alone) and ``instance_group [{ kind count }]``. The tokenizer limits (``max_tokens``, ``pad_token_id``) are computed
here by adamix-serve's own folder reader (`read_model_folder`) and written as config parameters, so the Triton
models tokenise exactly as the server does; the ONNX model is opened once (onnxruntime) to read its inputs and
check its logits against the manifest's labels.

**The Python models' environment.** The Python backend runs ``model.py`` in a stub process with an embedded
interpreter of a fixed version (3.8-3.13 stubs ship with Triton builds). That interpreter needs numpy,
``tokenizers`` and, for the python layout, ``onnxruntime``; and the stubs are built against numpy 1.x: under
numpy 2 they mis-read BYTES tensors ("Stub process is not healthy"). The documented, per-model way to give a
Python model its own environment is the ``EXECUTION_ENV_PATH`` parameter (python_backend README, "Creating
Custom Execution Environments"): a conda-pack archive, or an unpacked environment folder with ``bin/activate``.
``--python-env PATH`` writes it into every Python model's config.pbtxt. A plain venv works as the unpacked form
(tests/serving/triton/test_triton.py builds one)::

    python3.11 -m venv --without-pip ENV     # the stub's Python version
    pip install --target ENV/lib/python3.11/site-packages "numpy<2" tokenizers onnxruntime
    ln -s "$(python3.11 -c 'import sysconfig as s; print(s.get_config_var("LIBDIR"))')/libpython3.11.so.1.0" ENV/lib/

The backend sources ``ENV/bin/activate`` (which puts ``ENV/bin`` first on PATH: the embedded interpreter finds
``ENV/bin/python3`` there and, through ``pyvenv.cfg``, the venv's site-packages) and puts ``ENV/lib`` first on
LD_LIBRARY_PATH (so the stub loads the libpython the venv was made from). A venv's activate script names its
own path, so build it where it will stay; a conda-pack archive is the movable form. Without ``--python-env`` the stub uses
whatever Python the server's environment gives it (Triton's containers: the system Python).

Generation exports are refused: serving a generation model on Triton (KV-cache loop, streaming) is out of scope
for now. The repository is built in a temporary folder beside ``--output`` and renamed into place.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from adamix_deploy.contracts.atomic import atomic_directory
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import TOKENIZER_FILE, read_manifest
from adamix_deploy.contracts.tasks import SEQUENCE_TASKS

LAYOUTS = ("ensemble", "python")
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# onnxruntime's type names -> Triton's config types and the numpy types model.py casts token arrays to
_TRITON_TYPES = {
    "tensor(float)": ("TYPE_FP32", "float32"),
    "tensor(float16)": ("TYPE_FP16", "float16"),
    "tensor(int64)": ("TYPE_INT64", "int64"),
    "tensor(int32)": ("TYPE_INT32", "int32"),
}
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MODEL_SOURCE = "model.py"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TritonRepositoryError(AdamixError):
    """An export folder or an option adamix-triton cannot turn into a Triton model repository."""


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 500
    instances: int = 1
    kind: str = "cpu"  # cpu | gpu: where the model that runs the ONNX graph gets its instances
    dynamic: bool = True  # False: no dynamic_batching block, Triton runs every request on its own

    def check(self) -> None:
        if self.max_batch_size < 1:
            raise TritonRepositoryError(f"--max-batch-size must be at least 1, not {self.max_batch_size}")
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise TritonRepositoryError(
                f"--preferred-batch-sizes {', '.join(map(str, bad))} not within 1..--max-batch-size "
                f"({self.max_batch_size})"
            )
        if self.max_queue_delay_us < 0:
            raise TritonRepositoryError("--max-queue-delay-us must not be negative")
        if self.instances < 1:
            raise TritonRepositoryError(f"--instances must be at least 1, not {self.instances}")
        if self.kind not in KINDS:
            raise TritonRepositoryError(f"--kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple[int, ...]  # without the batch dimension

    def pbtxt(self) -> str:
        dims = ", ".join(map(str, self.dims))
        return f"  {{\n    name: {_quote(self.name)}\n    data_type: {self.data_type}\n    dims: [ {dims} ]\n  }}"


@dataclass(frozen=True)
class ExportSpec:
    """What the repository needs to know about the export, read once and checked."""

    folder: Path
    task: str
    labels: list[str] | None
    onnx_file: str
    onnx_files: list[str]  # the graph and its external-data files, copied together
    inputs: list[TensorSpec]  # the graph's token inputs, in the graph's order
    logits: TensorSpec
    max_tokens: int
    pad_token_id: int
    source_sha256: str

    @property
    def numpy_inputs(self) -> dict[str, str]:
        numpy_of = {triton: numpy for triton, numpy in _TRITON_TYPES.values()}
        return {i.name: numpy_of[i.data_type] for i in self.inputs}

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.task == "regression":
            return [TensorSpec("score", "TYPE_FP32", (1,))]
        return [TensorSpec("label", "TYPE_STRING", (1,)), TensorSpec("scores", "TYPE_FP32", (len(self.labels),))]


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C-style escapes; UTF-8 passes through)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def read_export(folder: str | Path, precision: str = "fp32") -> ExportSpec:
    """Check an export folder for Triton and read its tokenizer limits and ONNX signature."""
    # serving's reader: the same checks (files present, sizes as recorded, tokenizer loads) and the same
    # max_tokens / pad_token_id the server tokenises with. Imported here, not at module level, so that the
    # command's --help does not load onnxruntime.
    from adamix_deploy.serving.engine.model_folder import ModelFolderError, read_model_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise TritonRepositoryError(f"{folder}: not a folder")
    manifest = read_manifest(folder)
    if manifest.adapter_base is not None:
        raise TritonRepositoryError(
            f"{folder}: a base for onnxruntime adapters; Triton's onnxruntime backend cannot switch adapters per "
            "request: give adamix-triton a folded export (adamix-export --output) of each task"
        )
    if manifest.task not in SEQUENCE_TASKS:
        raise TritonRepositoryError(
            f"{folder}: a {manifest.task} export; adamix-triton writes classification and regression "
            "repositories only (generation on Triton is out of scope for now: serve it with adamix-serve)"
        )
    try:
        model = read_model_folder(folder, precision)
        model.load(threads=1, gpu=False)  # opens the graph and checks its logits against the manifest's labels
    except ModelFolderError as e:
        raise TritonRepositoryError(str(e)) from None
    session = model.session
    inputs = []
    for i in session.get_inputs():
        if i.name not in TOKEN_INPUTS or i.type not in _TRITON_TYPES or len(i.shape) != 2:
            raise TritonRepositoryError(
                f"{folder}: {model.onnx_file} input {i.name} ({i.type}, shape {i.shape}) is not a [batch, "
                f"sequence] token input ({', '.join(TOKEN_INPUTS)}) that Triton can batch"
            )
        inputs.append(TensorSpec(i.name, _TRITON_TYPES[i.type][0], (-1,)))
    outputs = {o.name: o for o in session.get_outputs()}
    if "logits" not in outputs or outputs["logits"].type not in _TRITON_TYPES:
        raise TritonRepositoryError(f"{folder}: {model.onnx_file} has no float 'logits' output")
    width = len(model.labels) if manifest.task == "classification" else 1
    logits = TensorSpec("logits", _TRITON_TYPES[outputs["logits"].type][0], (width,))
    # external data (graphs over 2 GB) sits beside the graph under its name: model.onnx_data, model.onnx.data
    onnx_files = sorted(
        n
        for n in manifest.files
        if n == model.onnx_file or n.startswith((f"{model.onnx_file}_", f"{model.onnx_file}."))
    )
    return ExportSpec(
        folder=folder,
        task=manifest.task,
        labels=list(manifest.labels) if manifest.task == "classification" else None,
        onnx_file=model.onnx_file,
        onnx_files=onnx_files or [model.onnx_file],
        inputs=inputs,
        logits=logits,
        max_tokens=model.max_tokens,
        pad_token_id=model.pad_token_id,
        source_sha256=manifest.source.sha256,
    )


def _dynamic_batching(b: BatchingOptions) -> str:
    sizes = ", ".join(map(str, b.preferred_batch_sizes))
    preferred = f"\n  preferred_batch_size: [ {sizes} ]" if b.preferred_batch_sizes else ""
    return f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {b.max_queue_delay_us}\n}}\n"


def _instance_group(kind: str, count: int) -> str:
    return f"instance_group [\n  {{\n    kind: {KINDS[kind]}\n    count: {count}\n  }}\n]\n"


def _parameters(values: dict[str, str]) -> str:
    return "".join(
        f"parameters {{\n  key: {_quote(k)}\n  value: {{ string_value: {_quote(v)} }}\n}}\n"
        for k, v in values.items()
    )


def _tensors(section: str, specs: list[TensorSpec]) -> str:
    return f"{section} [\n" + ",\n".join(s.pbtxt() for s in specs) + "\n]\n"


def model_config(
    name: str,
    header: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    batching: BatchingOptions,
    *,
    backend: str | None = None,
    platform: str | None = None,
    kind: str | None = None,
    parameters: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    """One config.pbtxt (protobuf text of Triton's ModelConfig)."""
    text = header + f"name: {_quote(name)}\n"
    text += f"backend: {_quote(backend)}\n" if backend else f"platform: {_quote(platform)}\n"
    text += f"max_batch_size: {batching.max_batch_size}\n"
    text += _tensors("input", inputs) + _tensors("output", outputs)
    if kind:  # an ensemble has neither a batcher nor instances of its own: its steps do
        text += (_dynamic_batching(batching) if batching.dynamic else "") + _instance_group(
            kind, batching.instances
        )
    return text + extra + _parameters(parameters or {})


def _ensemble_step(model: str, inputs: list[str], outputs: list[str]) -> str:
    maps = [f'      input_map {{ key: "{n}" value: "{n}" }}' for n in inputs]
    maps += [f'      output_map {{ key: "{n}" value: "{n}" }}' for n in outputs]
    return f"    {{\n      model_name: {_quote(model)}\n      model_version: -1\n" + "\n".join(maps) + "\n    }"


def _python_env_parameter(python_env: Path | None) -> dict[str, str]:
    return {"EXECUTION_ENV_PATH": str(python_env)} if python_env else {}


def _copy_source(version_dir: Path) -> None:
    source = resources.files("adamix_deploy.serving.triton").joinpath("python_backend", MODEL_SOURCE)
    (version_dir / MODEL_SOURCE).write_text(source.read_text())


def _check_python_env(path: str | None) -> Path | None:
    if path is None:
        return None
    env = Path(path).absolute()
    if env.is_dir():
        if not (env / "bin" / "activate").is_file():
            raise TritonRepositoryError(
                f"--python-env {path}: no bin/activate in that folder (a venv or conda env)"
            )
    elif not (env.is_file() and env.name.endswith((".tar.gz", ".tgz", ".tar"))):
        raise TritonRepositoryError(f"--python-env {path}: neither an environment folder nor a conda-pack archive")
    return env


def write_repository(
    export_folder: str | Path,
    output: str | Path,
    *,
    layout: str = "ensemble",
    name: str | None = None,
    batching: BatchingOptions = BatchingOptions(),
    precision: str = "fp32",
    truncate: bool = False,
    python_env: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the model repository atomically; returns a summary (models, files) for the command to print."""
    if layout not in LAYOUTS:
        raise TritonRepositoryError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    batching.check()
    output = Path(output)
    if output.exists() and not overwrite:
        raise TritonRepositoryError(f"{output} exists (pass --overwrite to replace it)")
    env = _check_python_env(python_env)
    spec = read_export(export_folder, precision)
    name = name or Path(export_folder).resolve().name
    if not _NAME.match(name):
        raise TritonRepositoryError(f"model name {name!r}: use letters, digits, '_', '.' or '-'")
    header = (
        f"# written by adamix-triton from {spec.folder.resolve()} ({spec.onnx_file}, source sha256 "
        f"{spec.source_sha256[:16]})\n"
    )
    text_in = [TensorSpec("text", "TYPE_STRING", (1,))]
    tokenizer_params = {
        "tokenizer_file": TOKENIZER_FILE,
        "max_tokens": str(spec.max_tokens),
        "pad_token_id": str(spec.pad_token_id),
        "truncate": "true" if truncate else "false",
        "onnx_inputs": json.dumps(spec.numpy_inputs),
    }
    labels = {"labels": json.dumps(spec.labels)}
    with atomic_directory(output) as repo:
        if layout == "python":
            version = repo / name / "1"
            version.mkdir(parents=True)
            _copy_source(version)
            shutil.copy2(spec.folder / TOKENIZER_FILE, version / TOKENIZER_FILE)
            for file in spec.onnx_files:
                shutil.copy2(spec.folder / file, version / file)
            params = {"adamix_role": "classify", **tokenizer_params, **labels, "onnx_file": spec.onnx_file}
            config = model_config(
                name, header, text_in, spec.outputs, batching, backend="python", kind=batching.kind,
                parameters={**params, **_python_env_parameter(env)},
            )  # fmt: skip
            (repo / name / "config.pbtxt").write_text(config)
            models = [name]
        else:
            models = _write_ensemble(repo, name, header, spec, batching, tokenizer_params, labels, env, text_in)
        files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    return {"repository": str(output), "layout": layout, "models": models, "files": files}


def _write_ensemble(
    repo: Path,
    name: str,
    header: str,
    spec: ExportSpec,
    batching: BatchingOptions,
    tokenizer_params: dict[str, str],
    labels: dict[str, str],
    env: Path | None,
    text_in: list[TensorSpec],
) -> list[str]:
    tokenizer, onnx, post = f"{name}_tokenizer", f"{name}_onnx", f"{name}_postprocess"
    for model in (name, tokenizer, onnx, post):
        (repo / model / "1").mkdir(parents=True)
    _copy_source(repo / tokenizer / "1")
    _copy_source(repo / post / "1")
    shutil.copy2(spec.folder / TOKENIZER_FILE, repo / tokenizer / "1" / TOKENIZER_FILE)
    # the onnxruntime backend loads <version>/model.onnx; external data keeps its own name beside it
    for file in spec.onnx_files:
        target = "model.onnx" if file == spec.onnx_file else file
        shutil.copy2(spec.folder / file, repo / onnx / "1" / target)
    env_param = _python_env_parameter(env)
    configs = {
        tokenizer: model_config(
            tokenizer, header, text_in, spec.inputs, batching, backend="python", kind="cpu",
            parameters={"adamix_role": "tokenize", **tokenizer_params, **env_param},
        ),
        onnx: model_config(onnx, header, spec.inputs, [spec.logits], batching, backend="onnxruntime",
                           kind=batching.kind),
        post: model_config(
            post, header, [spec.logits], spec.outputs, batching, backend="python", kind="cpu",
            parameters={"adamix_role": "postprocess", **labels, **env_param},
        ),
    }  # fmt: skip
    token_names = [i.name for i in spec.inputs]
    output_names = [o.name for o in spec.outputs]
    steps = [
        _ensemble_step(tokenizer, ["text"], token_names),
        _ensemble_step(onnx, token_names, ["logits"]),
        _ensemble_step(post, ["logits"], output_names),
    ]
    scheduling = "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
    configs[name] = model_config(
        name, header, text_in, spec.outputs, batching, platform="ensemble", extra=scheduling
    )
    for model, text in configs.items():
        (repo / model / "config.pbtxt").write_text(text)
    return [name, tokenizer, onnx, post]
