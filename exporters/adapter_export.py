"""``adamix-export --merge CKPT --adapter-of BASE``: a mixture checkpoint as an onnxruntime adapter of a
shared base graph, instead of a folded export of its own.

Read `export_adapter` top to bottom: load the checkpoint and merge its experts (LoRA: `merged_lora_factors`,
one LoRA pair per module, not folded; bottleneck adapters: collapsed to one static bottleneck each); when BASE
is not a base yet, write it from this checkpoint's base model (`write_base`: the base model's graph with the
LoRA, head and bottleneck tensors as inputs, `exporters.ort_adapters`);
then the adapter's tensors as that graph's inputs want them, checked on the base graph against the merged
PyTorch model (the reference of a folded export's parity too), written to ``BASE/adapters/<name>/`` in one
rename. Adding an adapter never rewrites the base. The folder format is `exporters.export_folder`.

What a base can adapt is one of two sets fixed by its model's family, not whatever its first checkpoint
changed (`base_layers`): the whole task head, pooler included (`replaced_tensors`), and LoRA inputs, each
empty by default, either on the family's default LoRA layers (``lora_layers="default"``: those `adamix-train`
and PEFT both target by default, BERT/RoBERTa/Llama query and value, GPT-2 c_attn) or on every linear layer
of the model's body (``"all"``, `adaptable_layers`: for BERT also key, the attention output, intermediate and
output dense layers; Llama o/gate/up/down; GPT-2 c_proj and c_fc). "default" takes "all" when the first
checkpoint adapts a layer beyond the defaults. Every layer is not the default because each empty branch still
costs passes over its layer's output (MiniLM-L6 on CPU, 36 layers against 12: +2.8 to +6.7 % latency at batch 1 and 8,
`python -m benchmarks.adapter_base_inputs`).
So a base made from a PEFT folder with LoRA on query/value takes a default-recipe checkpoint (query/value and a
trained pooler), and the other way round. Only bottleneck positions come from the first checkpoint (a
bottleneck-adapter mixture's, with their width). Whatever a checkpoint changes that its base takes no input for
is refused before anything is written, in one line naming those tensors (`adapter_tensors`).
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers.pytorch_utils import Conv1D

from adamix_deploy.adapter import LinearWithAdapter
from adamix_deploy.checkpoint import MixtureCheckpoint
from adamix_deploy.contracts.atomic import atomic_directory
from adamix_deploy.contracts.checkpoint_format import CheckpointConfig
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import (
    ADAPTER_FILE,
    ADAPTER_LORA_LAYERS,
    ADAPTER_MANIFEST_NAME,
    ADAPTER_NAME_PATTERN,
    ADAPTERS_FOLDER,
    EXTERNAL_DATA_SUFFIX,
    MANIFEST_NAME,
    MULTI_ADAPTER_FILE,
    ONNX_FILES,
    AdapterBaseInfo,
    AdapterManifest,
    Manifest,
    MixtureInfo,
    OnnxInfo,
    read_manifest,
    sha256_file,
    sha256_folder,
    write_manifest,
)
from adamix_deploy.contracts.tasks import SEQUENCE_TASKS
from adamix_deploy.exporters.onnx_export import export_onnx
from adamix_deploy.exporters.optimize import optimize_adapter_base
from adamix_deploy.exporters.ort_adapters import (
    BOTTLENECK,
    HEAD,
    LORA_A,
    LORA_B,
    AdapterInput,
    ReplacedTensor,
    multi_adapter_graph,
    multi_adapter_refusal,
)
from adamix_deploy.exporters.parity import (
    DecoderStage,
    ParityError,
    check_classification,
    check_generation,
    generation_parity,
    parity_inputs,
)
from adamix_deploy.exporters.pipeline import keep_export_files, mixture_info, onnxruntime_version, source_info
from adamix_deploy.importers import detect_and_load
from adamix_deploy.inject import FAMILY_TARGETS, matching_modules, set_submodule
from adamix_deploy.lora import MixtureLoRALinear
from adamix_deploy.merge import (
    BottleneckAdapter,
    merge_mixture_model,
    merged_lora_factors,
    parse_merge_method,
    routing_for,
)
from adamix_deploy.mixture import set_routing
from adamix_deploy.mixture_model import POOLER_PATTERN

ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)


def export_adapter(
    source: str | Path,
    base_folder: str | Path,
    name: str | None = None,
    merge_method: str = "average",
    verify_file: str | Path | None = None,
    overwrite: bool = False,
    tolerance: float = 1e-4,
    base_model: str | None = None,
    greedy_steps: int = 16,
    parity_prompts: int = 4,
    opset: int = 18,
    lora_layers: str = "default",
) -> tuple[AdapterManifest, bool]:
    """Write ``base_folder/adapters/<name>/`` (and the base itself when ``base_folder`` is not one yet, with
    LoRA inputs on ``lora_layers``: see the module docstring). Returns the adapter's manifest and whether the
    base was created."""
    if lora_layers not in ADAPTER_LORA_LAYERS:
        raise AdamixError(f"lora_layers must be one of {', '.join(ADAPTER_LORA_LAYERS)}, got {lora_layers!r}")
    source, base_folder = Path(source), Path(base_folder)
    name = name or source.stem
    if not ADAPTER_NAME.match(name):
        raise AdamixError(f"adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting alnum")
    target = base_folder / ADAPTERS_FOLDER / name
    if target.exists() and not overwrite:
        raise AdamixError(f"{target} exists: pass --overwrite to replace that adapter")
    merge_method = parse_merge_method(merge_method)
    started = time.perf_counter()
    ckpt = detect_and_load(source, base_model)
    loras = _lora_modules(ckpt.model)
    set_routing(ckpt.model, routing_for(merge_method))
    merged = merge_mixture_model(ckpt.model, merge_method)  # LoRA folded, adapters collapsed to one each
    created = not (base_folder / MANIFEST_NAME).exists()
    if created:
        if base_folder.exists() and any(base_folder.iterdir()):
            raise AdamixError(f"{base_folder} is not empty and has no {MANIFEST_NAME}: not a base for adapters")
        write_base(ckpt, merged, loras, base_folder, opset, lora_layers)
    base = read_manifest(base_folder)
    _check_base(base, ckpt.config, base_folder)
    inputs = [AdapterInput(**i) for i in base.adapter_base.inputs]
    tensors, ranks = adapter_tensors(merged, loras, inputs, merge_method, ckpt.config.head, base_folder)
    task, config = ckpt.config.task, ckpt.config
    samples = parity_inputs(task, verify_file, config, parity_prompts)
    stages = {"onnx_fp32_adapter": base_folder / ONNX_FILES["fp32"]}
    with atomic_directory(target) as tmp:
        write_adapter_file(tmp / ADAPTER_FILE, tensors)
        try:
            if task in SEQUENCE_TASKS:
                parity = check_classification(ckpt.model, merged, ckpt.tokenizer, stages, samples, set(), tolerance,
                                              config.max_length, adapter=tmp / ADAPTER_FILE)  # fmt: skip
            else:
                parity = check_generation(ckpt.model, merged, ckpt.tokenizer, stages, samples, set(), tolerance,
                                          greedy_steps, adapter=tmp / ADAPTER_FILE)  # fmt: skip
        except ParityError as e:
            raise ParityError(f"{e}; is this checkpoint's base model the one {base_folder} was made from "
                              f"({base.base_model.name})?") from None  # fmt: skip
        if base.adapter_base.multi_adapter_file:
            parity["multi_adapter"] = check_multi_adapter(base_folder, tmp / ADAPTER_FILE, ckpt.tokenizer, samples,
                                                          tolerance, greedy_steps)  # fmt: skip
        manifest = AdapterManifest(
            name=name,
            task=task,
            labels=config.labels,
            prompt_template=config.prompt_template,
            max_length=config.max_length,
            mixture=mixture_info(config),
            merge_method=merge_method,
            base_sha256=base.adapter_base.model_sha256,
            ranks=ranks,
            parity=parity,
            source=source_info(ckpt, source),
            export_seconds=round(time.perf_counter() - started, 1),
        )
        (tmp / ADAPTER_MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2))
    return manifest, created


def _lora_modules(model: torch.nn.Module) -> dict[str, MixtureLoRALinear]:
    """The LoRA mixture modules by name (bottleneck adapters are read from the merged model instead)."""
    loras = {n: m for n, m in model.named_modules() if isinstance(m, MixtureLoRALinear)}
    if not loras and not any(isinstance(m, LinearWithAdapter) for m in model.modules()):
        raise AdamixError("this checkpoint has no LoRA or adapter modules: nothing to export as an adapter")
    return loras


def adaptable_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The layers a base takes LoRA on, by the name a checkpoint of its model gives them: every linear layer
    (``nn.Linear``, GPT-2's ``Conv1D``) of the model's body (``base_model_prefix``), which are its attention
    and feed-forward projections: not the task head, the pooler or the LM head (an adapter brings those whole,
    `replaced_tensors`), nor a merged bottleneck's own layers. A layer that a bottleneck follows (the
    ``base`` of a `LinearWithAdapter`) goes by its wrapper's name, the name it has in the plain model."""
    prefix = getattr(model, "base_model_prefix", "")
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    bottlenecks = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, BottleneckAdapter))
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, Conv1D)) or module is output or name.startswith(bottlenecks):
            continue
        if (prefix and not name.startswith(f"{prefix}.")) or POOLER_PATTERN.search(f"{name}.weight"):
            continue
        parent, _, child = name.rpartition(".")
        if child == "base" and isinstance(model.get_submodule(parent), LinearWithAdapter):
            name = parent
        layers[name] = module
    return layers


def base_layers(
    model: torch.nn.Module, loras: dict[str, MixtureLoRALinear], replaced: dict, lora_layers: str
) -> dict[str, torch.nn.Module]:
    """The layers a new base takes LoRA on: every layer of ``model`` (`adaptable_layers`) with ``"all"``, or
    for an unknown family, or when the checkpoint ``loras`` adapts a layer beyond its family's default LoRA
    layers (a LoRA on a head layer is not one: the head is replaced whole); else those default layers."""
    layers = adaptable_layers(model)
    defaults = FAMILY_TARGETS.get(model.config.model_type, {}).get("lora")
    if lora_layers == "all" or not defaults:
        return layers
    chosen = set(matching_modules(model, list(defaults))) & set(layers)
    beyond = [n for n in loras if n not in chosen and f"{n}.weight" not in replaced]
    return layers if beyond else {n: m for n, m in layers.items() if n in chosen}


def replaced_tensors(model: torch.nn.Module, task: str) -> dict[str, ReplacedTensor]:
    """The tensors each adapter brings its own of, besides LoRA: a sequence task's whole head (every parameter
    outside the model's body, and the pooler's dense layer, whether or not the checkpoint trained them; the axis
    whose size is the label count varies) and every collapsed bottleneck (its width varies)."""
    replaced = {}
    if task in SEQUENCE_TASKS:
        prefix, labels = getattr(model, "base_model_prefix", ""), model.config.num_labels
        for name, p in model.named_parameters():
            if (prefix and not name.startswith(f"{prefix}.")) or POOLER_PATTERN.search(name):
                value = p.detach().float().numpy()
                varies = value.shape[0] == labels and not POOLER_PATTERN.search(name)  # the last layer's outputs
                replaced[name] = ReplacedTensor(value, HEAD, 0 if varies else None, "labels" if varies else None)
    for index, (name, module) in enumerate(
        n for n in model.named_modules() if isinstance(n[1], BottleneckAdapter)
    ):
        width = f"bottleneck_{index}"
        for part, axis in (("down.weight", 0), ("down.bias", 0), ("up.weight", 1), ("up.bias", None)):
            value = module.get_parameter(part).detach().float().numpy()
            replaced[f"{name}.{part}"] = ReplacedTensor(
                value, BOTTLENECK, axis, width if axis is not None else None
            )
    return replaced


def _mark_replaced(model: torch.nn.Module, replaced: dict[str, ReplacedTensor]) -> dict[str, ReplacedTensor]:
    """Give every replaced parameter of ``model`` a value of its own, seeded, and return the tensors with those
    values. The graph inputs are placed by value (`ort_adapters`), and the ONNX exporter writes equal tensors
    once: a pooler's all-zero bias (a randomly initialised model's; MiniLM's is all zeros too) would share one
    initializer with every other all-zero bias and LayerNorm shift, and an input put in its place would feed
    them all (a checkpoint that trains the pooler then fails parity on that base). The values do not
    matter otherwise: each adapter brings its own, and without one the inputs' defaults are empty."""
    generator = torch.Generator().manual_seed(0)
    marked = {}
    with torch.no_grad():
        for name, tensor in replaced.items():
            parameter = model.get_parameter(name)
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
            marked[name] = ReplacedTensor(parameter.detach().float().numpy().copy(), tensor.kind, tensor.axis,
                                          tensor.axis_name)  # fmt: skip
    return marked


def _weight_out_in(layer: torch.nn.Module) -> np.ndarray:
    """A linear layer's weight as (out, in): GPT-2's Conv1D stores it (in, out)."""
    weight = layer.weight.detach().float().numpy()
    return weight if isinstance(layer, torch.nn.Linear) else weight.T


def write_base(
    ckpt: MixtureCheckpoint,
    merged: torch.nn.Module,
    loras: dict[str, MixtureLoRALinear],
    folder: Path,
    opset: int,
    lora_layers: str = "default",
) -> None:
    """The base model of ``ckpt`` as a graph whose linear layers (`base_layers`), head and bottlenecks take
    adapter inputs: ``merged`` with its LoRA layers back to the base layers (the head and collapsed
    bottlenecks stay, as the templates the inputs replace); written atomically."""
    started = time.perf_counter()
    config, task = ckpt.config, ckpt.config.task
    base_model = copy.deepcopy(merged)
    for module_name, lora in loras.items():
        set_submodule(base_model, module_name, copy.deepcopy(lora.base))
    replaced = _mark_replaced(base_model, replaced_tensors(base_model, task))
    layers = base_layers(base_model, loras, replaced, lora_layers)
    lora_weights = {n: _weight_out_in(m) for n, m in layers.items()}
    with atomic_directory(folder) as tmp:
        raw = tmp / ".raw"
        raw_onnx = export_onnx(base_model, ckpt.tokenizer, task, raw, opset)
        hf = base_model.config
        inputs, fusions = optimize_adapter_base(
            raw_onnx, tmp / ONNX_FILES["fp32"], hf.model_type, hf.num_attention_heads, hf.hidden_size,
            lora_weights, replaced,
        )  # fmt: skip
        keep_export_files(raw, tmp)
        multi_file, multi_absent = write_multi_adapter(tmp, inputs)
        graphs = (
            [ONNX_FILES["fp32"], ONNX_FILES["fp32"] + EXTERNAL_DATA_SUFFIX] if multi_file else [ONNX_FILES["fp32"]]
        )

        mixture = config.mixture
        manifest = Manifest(
            task=task,
            labels=None,
            prompt_template=config.prompt_template,
            max_length=config.max_length,
            base_model=config.base_model,
            mixture=MixtureInfo("lora", 1, "none", rank=mixture.get("rank"), alpha=mixture.get("alpha")),
            parameters=None,
            merge_method="none",
            onnx=OnnxInfo(
                opset, onnxruntime_version(), {"fp32": ONNX_FILES["fp32"]}, fusions, task == "generation"
            ),
            parity={"note": "each adapter's parity is in its adapter_manifest.json"},
            source=source_info(ckpt, ckpt.folder),
            export_seconds=round(time.perf_counter() - started, 1),
            adapter_base=AdapterBaseInfo(
                inputs=[asdict(i) for i in inputs],
                # with external data model.onnx holds no weights: the digest covers them too
                model_sha256=sha256_folder(tmp, graphs) if multi_file else sha256_file(tmp / ONNX_FILES["fp32"]),
                multi_adapter_file=multi_file,
                multi_adapter_absent=multi_absent,
            ),
        )
        write_manifest(tmp, manifest)


def write_multi_adapter(folder: Path, inputs: list[AdapterInput]) -> tuple[str | None, str | None]:
    """Beside the base graph of ``folder``, its multi-adapter graph (`ort_adapters.multi_adapter_graph`) when
    it can have one, reading the same weights: the base graph is written again with external data, so that N
    adapters cost one base on disk and in memory. Returns (the file's name, None), or (None, why not)."""
    import onnx

    base_file = folder / ONNX_FILES["fp32"]
    model = onnx.load(base_file)
    absent = multi_adapter_refusal(model, inputs)
    if absent:
        return None, absent
    onnx.save_model(model, base_file, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=base_file.name + EXTERNAL_DATA_SUFFIX, size_threshold=1024)  # fmt: skip
    # onnx creates the weights file owner-only; a server running as another user reads it like model.onnx
    (folder / (base_file.name + EXTERNAL_DATA_SUFFIX)).chmod(base_file.stat().st_mode & 0o777)
    # save_model moved the weights out of the proto in memory too: the copy refers to the same file
    onnx.save_model(multi_adapter_graph(model, inputs), folder / MULTI_ADAPTER_FILE)
    return MULTI_ADAPTER_FILE, None


def check_multi_adapter(
    base_folder: Path, adapter_file: Path, tokenizer, prompts: list[str], tolerance: float, steps: int
) -> dict:
    """The adapter in a slot of the base's multi-adapter graph (as the server stacks it) against the base graph
    with the adapter active by run options (the reference here, itself checked against PyTorch): the same
    greedy tokens, and logits along them within ``tolerance`` (`parity.generation_parity`)."""
    from adamix_deploy.serving.engine.adapter_stack import AdapterStack, read_factors
    from adamix_deploy.serving.engine.onnx_loops import (
        ActiveAdapter,
        greedy_generate,
        open_session,
        sequence_logits,
    )

    info = read_manifest(base_folder).adapter_base
    stack = AdapterStack(info.inputs)
    stack.add("checked", read_factors(adapter_file))
    extra = stack.row_inputs(["checked"])
    single, multi = (
        open_session(base_folder / ONNX_FILES["fp32"]),
        open_session(base_folder / info.multi_adapter_file),
    )
    active, eos = ActiveAdapter(adapter_file), tokenizer.eos_token_id  # alive in this frame while the stages run
    stages = {
        "onnx_fp32_adapter": DecoderStage(
            greedy=lambda prompt: greedy_generate(single, prompt, steps, eos, active.run_options)[0],
            logits=lambda sequence: sequence_logits(single, sequence, active.run_options),
        ),
        "onnx_fp32_multi_adapter": DecoderStage(
            greedy=lambda prompt: greedy_generate(multi, prompt, steps, eos, extra=extra)[0],
            logits=lambda sequence: sequence_logits(multi, sequence, extra=extra),
        ),
    }
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    return generation_parity(stages, ids, set(), tolerance, steps)


def _check_base(base: Manifest, config: CheckpointConfig, folder: Path) -> None:
    """The checkpoint fits this base: same base model and task family. (Parity then checks the numbers.)"""
    if base.adapter_base is None:
        raise AdamixError(
            f"{folder} is an export folder, not a base for adapters (those are made by --adapter-of)"
        )
    task = config.task
    if (task in SEQUENCE_TASKS) != (base.task in SEQUENCE_TASKS):
        raise AdamixError(f"a {task} checkpoint cannot be an adapter of {folder}, a {base.task} base")
    mine, theirs = config.base_model, base.base_model
    # the structure must match here; whether the weights are the same base model, parity decides (a copy of
    # the same base under another path is fine, another fine-tune of the same architecture is not)
    if (mine.model_type, mine.architecture) != (theirs.model_type, theirs.architecture):
        raise AdamixError(
            f"this checkpoint's base model is {mine.name} ({mine.architecture}); {folder} is a base "
            f"of {theirs.name} ({theirs.architecture})"
        )


def adapter_tensors(
    merged: torch.nn.Module,
    loras: dict[str, MixtureLoRALinear],
    inputs: list[AdapterInput],
    method: str,
    trained: list[str] | None = None,
    base_folder: str | Path = "the base",
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The merged checkpoint as the base graph's adapter inputs, each in the graph's layout: LoRA ``a`` = A'ᵀ
    (in x r) and ``b`` = (scaling·B')ᵀ (r x out) from the mixture modules ``loras``; head and bottleneck
    tensors from ``merged`` as the graph holds them. Returns the tensors and each module's rank (or bottleneck
    width). What the checkpoint changes and the base takes no input for is an error naming all of it: a LoRA
    module (a LoRA on a head layer is in the head tensors, folded), a bottleneck position, or a parameter it
    trained (``trained``: the checkpoint config's ``head``, PEFT's ``modules_to_save``) that is not a head
    or bottleneck input. So is a shape the base cannot take."""
    refusal = _refusal(merged, loras, inputs, trained or [])
    if refusal:
        raise AdamixError(f"{base_folder} cannot take this checkpoint: {refusal}")
    parameters = dict(merged.named_parameters())
    tensors, ranks = {}, {}
    for item in inputs:
        if item.kind in (LORA_A, LORA_B):
            lora = loras.get(item.module)
            if lora is None:
                continue  # the base's empty default: this module unadapted
            a, b = merged_lora_factors(lora.lora_A.detach(), lora.lora_B.detach(), method)
            value = a.T if item.kind == LORA_A else (lora.scaling * b).T
            ranks[item.module] = int(a.shape[0])
        elif item.kind in (HEAD, BOTTLENECK):
            if item.module not in parameters:
                if item.kind == BOTTLENECK:
                    continue  # no adapter at this position: the empty default adds nothing
                raise AdamixError(f"the base takes head tensor {item.module}, which this checkpoint lacks")
            value = parameters[item.module].detach()
            value = value.T if item.transposed else value
            if item.module.endswith(".down.weight"):
                ranks[item.module.removesuffix(".down.weight")] = int(value.shape[0 if not item.transposed else 1])
        else:
            raise AdamixError(f"unknown adapter input kind {item.kind!r} in the base manifest")
        value = np.ascontiguousarray(value.float().numpy(), dtype=np.float32)
        fixed = [(axis, size) for axis, size in enumerate(item.shape) if isinstance(size, int)]
        if value.ndim != len(item.shape) or any(value.shape[axis] != size for axis, size in fixed):
            raise AdamixError(f"{item.name}: this checkpoint's tensor is {list(value.shape)}, the base takes "
                              f"{item.shape}")  # fmt: skip
        tensors[item.name] = value
    return tensors, ranks


def _refusal(
    merged: torch.nn.Module, loras: dict[str, MixtureLoRALinear], inputs: list[AdapterInput], trained: list[str]
) -> str | None:
    """What of the checkpoint the base has no input for, in one sentence naming every such tensor, or None."""
    lora_modules = {i.module for i in inputs if i.kind in (LORA_A, LORA_B)}
    whole = {i.module for i in inputs if i.kind in (HEAD, BOTTLENECK)}  # parameters an adapter brings whole
    extra = sorted(n for n in loras if n not in lora_modules and f"{n}.weight" not in whole)
    if extra:
        return (f"it adapts {', '.join(extra)}, which it has no LoRA input for (it takes LoRA on "
                f"{len(lora_modules)} layers, listed in its {MANIFEST_NAME}; a base made with LoRA on every layer "
                "takes any)")  # fmt: skip
    bottlenecks = [n for n, m in merged.named_modules() if isinstance(m, BottleneckAdapter)]
    missing = [n for n in bottlenecks if f"{n}.down.weight" not in whole]
    if missing:
        return (f"it has an adapter at {', '.join(missing)}, which it has no bottleneck input for (a base "
                "made from a LoRA checkpoint takes LoRA adapters only)")  # fmt: skip
    # a LoRA layer's own base weight is frozen: its trained tensors are the LoRA pair, which the check above took
    untaken = sorted(n for n in trained if n not in whole)
    if untaken:
        return (f"it trains {', '.join(untaken)}, which it has no input for (an adapter brings LoRA, the task "
                "head and bottlenecks; these stay the base model's)")  # fmt: skip
    return None


def write_adapter_file(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """onnxruntime's adapter format (flatbuffers), the tensors under the graph inputs' names."""
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in tensors.items()})
    adapter.export_adapter(str(path))
