"""Other formats, converted to the mixture form that merge/fold/export take.

- the project's mixture checkpoint (``adamix_config.json``)
- a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``): one expert
- the official AdaMix checkpoints (torch-saved, loaded with ``weights_only=True``: no pickled code runs), as
  a file or as a release folder holding one ``pytorch_model*.bin`` (``pytorch_model_mnli.bin`` and the like):
  NLU adapters (``...output.ExpertSoup.MoA_{A,B}.deepspeed_experts.j.{weight,bias}``) and GPT-2 NLG LoRA
  (``model_state_dict`` with ``...attn.c_attn.experts_lora_{A,B}.j``, q and v only, fan-in-fan-out)
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from adamix_deploy.checkpoint import MixtureCheckpoint, checkpoint_config, load_checkpoint, load_trainable_weights
from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.checkpoint_format import CONFIG_NAME, CheckpointConfig
from adamix_deploy.contracts.errors import AdamixError, CheckpointError
from adamix_deploy.contracts.tasks import DEFAULT_PROMPT_TEMPLATE
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
from adamix_deploy.packaged_models import resolve_model

OFFICIAL_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def detect_and_load(
    path: Path, base_model: str | None = None, lora_alpha: float | None = None, activation: str = "gelu"
) -> MixtureCheckpoint:
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return load_checkpoint(path, base_model)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return load_peft_lora(path, base_model)
    official = path if path.is_file() else _official_in_folder(path) if path.is_dir() else None
    if official is not None and official.suffix in OFFICIAL_SUFFIXES:
        return load_official_adamix(official, base_model, lora_alpha, activation)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    raise CheckpointError(
        f"{path}: unknown checkpoint format (expected a mixture checkpoint, a PEFT LoRA folder or an official "
        f"AdaMix {'/'.join(OFFICIAL_SUFFIXES)} file or a folder holding one pytorch_model* file)"
    )


def _official_in_folder(folder: Path) -> Path | None:
    """The one ``pytorch_model*`` weights file of an official AdaMix release folder (they ship as
    ``pytorch_model_mnli.bin`` and the like), or None when there is none; several make the choice the user's."""
    candidates = sorted(p for p in folder.glob("pytorch_model*") if p.is_file() and p.suffix in OFFICIAL_SUFFIXES)
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise CheckpointError(
            f"{folder}: several official AdaMix checkpoints ({names}): pass the path of the one to load"
        )
    return candidates[0] if candidates else None


def _resolve_base(name: str | None, origin: Path, hint: str) -> Path:
    if not name:
        raise CheckpointError(f"{origin}: the base model is not recorded; pass --base-model ({hint})")
    try:
        return resolve_model(name)
    except AdamixError:
        raise CheckpointError(
            f"{origin}: base model {name!r} not found; pass --base-model with its folder"
        ) from None


def _labels_for(base_path: Path, count: int) -> list[str]:
    config = json.loads((base_path / "config.json").read_text())
    id2label = config.get("id2label") or {}
    if len(id2label) == count:
        return [str(id2label[str(i)]) for i in range(count)]
    return [str(i) for i in range(count)]


def _checkpoint(model, tokenizer, config: CheckpointConfig, folder: Path) -> MixtureCheckpoint:
    model.eval()
    return MixtureCheckpoint(model, tokenizer, config, folder)


def _config(
    base_name: str, base_path: Path, model, task: str, labels, spec: MixtureSpec, head, fmt: str, files
) -> CheckpointConfig:
    template = DEFAULT_PROMPT_TEMPLATE if task == "generation" else None
    return checkpoint_config(model, base_name, base_path, task, labels, spec, head, prompt_template=template,
                             source_format=fmt, source_files=files)  # fmt: skip


# --- PEFT -------------------------------------------------------------------------------------------------


def load_peft_lora(folder: Path, base_model: str | None) -> MixtureCheckpoint:
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{folder}: PEFT type {config.get('peft_type')!r} is not LoRA")
    for unsupported in ("use_dora", "rank_pattern", "alpha_pattern", "layer_replication"):
        if config.get(unsupported):
            raise CheckpointError(f"{folder}: PEFT option {unsupported} is not supported")
    task = {"SEQ_CLS": "classification", "CAUSAL_LM": "generation"}.get(config.get("task_type"))
    if task is None:
        raise CheckpointError(
            f"{folder}: PEFT task type {config.get('task_type')!r} (supported: SEQ_CLS, CAUSAL_LM)"
        )
    base_name = base_model or config.get("base_model_name_or_path")
    base_path = _resolve_base(base_name, folder, "the PEFT adapter_config names a base model that is not here")
    weights_file = folder / "adapter_model.safetensors"
    if weights_file.is_file():
        weights = load_file(weights_file)
    elif (folder / "adapter_model.bin").is_file():
        weights = _torch_load(folder / "adapter_model.bin")
    else:
        raise CheckpointError(f"{folder}: no adapter_model.safetensors")
    prefix = "base_model.model."
    modules = sorted({k[len(prefix) : -len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight")})
    if not modules:
        raise CheckpointError(f"{folder}: no LoRA weights (keys like base_model.model.<module>.lora_A.weight)")
    head_tensors = {k[len(prefix) :]: v for k, v in weights.items() if "lora_" not in k and k.startswith(prefix)}
    head_tensors = {k.replace(".modules_to_save.default", ""): v for k, v in head_tensors.items()}
    rank = int(config["r"])
    # rsLoRA scales by alpha / sqrt(r); this project scales by alpha / r: the same scaling, restated.
    alpha = float(config["lora_alpha"]) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)
    labels = None
    if task == "classification":
        out = [v for k, v in head_tensors.items() if k.endswith("weight")]
        count = min(v.shape[0] for v in out) if out else 2
        labels = _labels_for(base_path, count)
    spec = MixtureSpec("lora", experts=1, share="up", rank=rank, alpha=alpha, modules=modules)
    tokenizer = load_tokenizer(folder if (folder / "tokenizer_config.json").is_file() else base_path)
    model, head, spec = build_mixture_model(base_path, task, labels, spec, tokenizer, head=sorted(head_tensors))
    tensors = dict(head_tensors)
    for m in modules:
        tensors[f"{m}.lora_A"] = weights[f"{prefix}{m}.lora_A.weight"][None]
        tensors[f"{m}.lora_B"] = weights[f"{prefix}{m}.lora_B.weight"][None]
    load_trainable_weights(model, tensors, folder)
    files = [n for n in ("adapter_config.json", weights_file.name) if (folder / n).is_file()]
    return _checkpoint(
        model,
        tokenizer,
        _config(base_name, base_path, model, task, labels, spec, head, "peft-lora", files),
        folder,
    )


# --- official AdaMix --------------------------------------------------------------------------------------


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a weights-only torch file ({str(e).splitlines()[0][:200]})") from None


_NLU_KEY = re.compile(
    r"^(.*\.layer\.\d+\.output)\.ExpertSoup\.MoA_([AB])\.deepspeed_experts\.(\d+)\.(weight|bias)$"
)
_NLG_KEY = re.compile(r"^(.*\.attn\.c_attn)\.experts_lora_([AB])\.(\d+)$")


def load_official_adamix(
    path: Path, base_model: str | None, lora_alpha: float | None, activation: str = "gelu"
) -> MixtureCheckpoint:
    state = _torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict")
    if "model_state_dict" in state:
        return _official_gpt2(path, state["model_state_dict"], base_model, lora_alpha)
    if any(_NLU_KEY.match(k) for k in state):
        return _official_nlu(path, state, base_model, activation)
    raise CheckpointError(f"{path}: no official AdaMix keys (ExpertSoup.MoA_A/B or experts_lora_A/B)")


def _stack(groups: dict[int, torch.Tensor], origin: Path, what: str) -> torch.Tensor:
    if sorted(groups) != list(range(len(groups))):
        raise CheckpointError(f"{origin}: {what}: expert indices {sorted(groups)} are not 0..n-1")
    return torch.stack([groups[i] for i in range(len(groups))])


def _share(n_down: int, n_up: int) -> tuple[int, str]:
    experts = max(n_down, n_up)
    if n_down != n_up and 1 not in (n_down, n_up):
        raise AdamixError(
            f"sides have {n_down} and {n_up} experts: only equal counts or one shared side are supported"
        )
    return experts, ("up" if n_up == 1 and experts > 1 else "down" if n_down == 1 and experts > 1 else "none")


def _official_nlu(path: Path, state: dict, base_model: str | None, activation: str) -> MixtureCheckpoint:
    base_path = _resolve_base(base_model, path, "the RoBERTa/BERT model the AdaMix run started from")
    groups: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for key, value in state.items():
        match = _NLU_KEY.match(key)
        if match:
            module, side, index, kind = match.groups()
            groups.setdefault(module, {}).setdefault(f"{side}.{kind}", {})[int(index)] = value
        elif key.endswith("expert_score_weight") and value.numel() and not torch.all(value == value.flatten()[0]):
            raise CheckpointError(f"{path}: {key} is not uniform: only the uniform AdaMix average is supported")
    first = next(iter(groups.values()))
    n_down, n_up = len(first["A.weight"]), len(first["B.weight"])
    experts, share = _share(n_down, n_up)
    bottleneck = first["A.weight"][0].shape[0]
    head_tensors = {k: v for k, v in state.items() if k.startswith("classifier.")}
    out_weight = [v for k, v in head_tensors.items() if k.endswith("weight")]
    labels = _labels_for(base_path, min(v.shape[0] for v in out_weight)) if out_weight else None
    if labels is None:
        raise CheckpointError(f"{path}: no classifier.* weights: official NLU checkpoints carry their task head")
    modules = sorted(f"{m}.dense" for m in groups)
    spec = MixtureSpec("adapter", experts=experts, share=share, bottleneck=bottleneck, activation=activation,
                       placement="ffn", modules=modules)  # fmt: skip
    tokenizer = load_tokenizer(base_path)
    model, head, spec = build_mixture_model(
        base_path, "classification", labels, spec, tokenizer, head=sorted(head_tensors)
    )
    tensors = dict(head_tensors)
    for module, sides in groups.items():
        target = f"{module}.dense.adapter"
        tensors[f"{target}.down_weight"] = _stack(sides["A.weight"], path, module)
        tensors[f"{target}.down_bias"] = _stack(sides["A.bias"], path, module)
        tensors[f"{target}.up_weight"] = _stack(sides["B.weight"], path, module)
        tensors[f"{target}.up_bias"] = _stack(sides["B.bias"], path, module)
    load_trainable_weights(model, tensors, path)
    config = _config(
        base_model, base_path, model, "classification", labels, spec, head, "official-adamix-nlu", [path.name]
    )
    return _checkpoint(model, tokenizer, config, path.parent)


def _official_gpt2(path: Path, state: dict, base_model: str | None, lora_alpha: float | None) -> MixtureCheckpoint:
    base_path = _resolve_base(base_model, path, "the GPT-2 model the AdaMix run started from")
    if lora_alpha is None:
        raise CheckpointError(f"{path}: official GPT-2 AdaMix checkpoints do not store alpha: pass --lora-alpha")
    groups: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for key, value in state.items():
        match = _NLG_KEY.match(key)
        if match:
            module, side, index = match.groups()
            groups.setdefault(module, {}).setdefault(side, {})[int(index)] = value
    if not groups:
        raise CheckpointError(f"{path}: model_state_dict has no ...attn.c_attn.experts_lora_A/B.j keys")
    first = next(iter(groups.values()))
    experts, share = _share(len(first["A"]), len(first["B"]))
    two_r, d_in = first["A"][0].shape
    r = two_r // 2  # q and v each have rank r: the reference's MergedLinear with enable_lora=[q, k, v]=[T, F, T]
    tokenizer = load_tokenizer(base_path)
    # One LoRA of rank 2r on the fused c_attn whose B is block-structured: B_full @ A = [B_q A_q; 0; B_v A_v],
    # exactly the reference's zero-padded q/v update. Its scaling alpha/(2r) must equal the reference's alpha/r.
    spec = MixtureSpec("lora", experts=experts, share=share, rank=two_r, alpha=2 * lora_alpha,
                       modules=sorted(_hf_name(m) for m in groups))  # fmt: skip
    model, head, spec = build_mixture_model(base_path, "generation", None, spec, tokenizer, head=[])
    tensors = {}
    for module, sides in groups.items():
        name = _hf_name(module)
        d_out = model.get_submodule(name).lora_B.shape[1]
        d = d_out // 3
        tensors[f"{name}.lora_A"] = _stack(sides["A"], path, module)
        b_compact = _stack(sides["B"], path, module)  # (n, 2d, r): q rows then v rows
        if b_compact.shape[1:] != (2 * d, r):
            raise CheckpointError(
                f"{path}: {module} lora_B has shape {tuple(b_compact.shape[1:])}, expected {(2 * d, r)}"
            )
        b_full = torch.zeros(b_compact.shape[0], d_out, two_r)
        b_full[:, :d, :r] = b_compact[:, :d]  # q block uses the first r rows of A
        b_full[:, 2 * d :, r:] = b_compact[:, d:]  # v block uses the last r rows of A
        tensors[f"{name}.lora_B"] = b_full
    load_trainable_weights(model, tensors, path)
    config = _config(
        base_model, base_path, model, "generation", None, spec, head, "official-adamix-gpt2", [path.name]
    )
    return _checkpoint(model, tokenizer, config, path.parent)


def _hf_name(module: str) -> str:
    """The reference GPT-2 names its modules like Hugging Face's GPT2LMHeadModel (transformer.h.L...)."""
    return module if module.startswith("transformer.") else f"transformer.{module.split('transformer.')[-1]}"
