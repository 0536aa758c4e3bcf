"""Put mixture modules into a Hugging Face model and decide what trains.

Where modules go, by model family (``model.config.model_type``); ``--targets`` (module-name regular
expressions, matched against the end of dotted module names) overrides the defaults for any family.

- LoRA: on the attention projections the LoRA/AdaMix papers use (query and value).
- Adapter: after the feed-forward output projection, before the layer's dropout and residual LayerNorm
  (``ffn``, the reference AdaMix placement); ``ffn+attn`` adds Houlsby's second position after the
  attention output projection.
"""

from __future__ import annotations

import re
from dataclasses import replace

from torch import nn

from adamix_deploy.adapter import LinearWithAdapter, MixtureAdapter
from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.errors import AdamixError, ModelError
from adamix_deploy.lora import MixtureLoRALinear, linear_features
from adamix_deploy.mixture import mixture_modules

_BERT_LIKE = {
    "lora": ("query", "value"),
    "ffn": (r"layer\.\d+\.output\.dense",),
    "attn": (r"layer\.\d+\.attention\.output\.dense",),
}
_LLAMA_LIKE = {"lora": ("q_proj", "v_proj"), "ffn": (r"mlp\.down_proj",), "attn": (r"self_attn\.o_proj",)}
FAMILY_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": {"lora": ("q_lin", "v_lin"), "ffn": (r"ffn\.lin2",), "attn": (r"attention\.out_lin",)},
    # GPT-2 fuses q, k, v into one Conv1D (c_attn): LoRA covers all three outputs of it.
    "gpt2": {"lora": ("c_attn",), "ffn": (r"mlp\.c_proj",), "attn": (r"attn\.c_proj",)},
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}


def target_patterns(spec: MixtureSpec, family: str) -> list[str]:
    if spec.targets:
        return list(spec.targets)
    defaults = FAMILY_TARGETS.get(family)
    if defaults is None:
        known = ", ".join(sorted(FAMILY_TARGETS))
        raise ModelError(f"unknown model family {family!r}: pass --targets (known families: {known})")
    if spec.method == "lora":
        return list(defaults["lora"])
    return list(defaults["ffn"]) + (list(defaults["attn"]) if spec.placement == "ffn+attn" else [])


def matching_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(rf"(^|\.)(?:{p})$"))
        except re.error as e:
            raise AdamixError(f"target pattern {p!r} is not a valid regular expression: {e}") from None
    return [name for name, _ in model.named_modules() if name and any(c.search(name) for c in compiled)]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def inject_mixture(model: nn.Module, spec: MixtureSpec) -> MixtureSpec:
    """Wrap the target modules of ``model`` in place (``spec.modules`` when it names them, else the modules
    its targets match); returns ``spec`` with the wrapped names in ``modules`` (``spec`` itself is left as is)."""
    if spec.method == "head":
        return replace(spec, modules=[])
    patterns = target_patterns(spec, model.config.model_type)
    names = spec.modules or matching_modules(model, patterns)
    if not names:
        raise ModelError(f"no module of this {model.config.model_type} model matches targets {patterns}")
    for name in names:
        base = model.get_submodule(name)
        if spec.method == "lora":
            wrapped = MixtureLoRALinear(
                base, spec.rank, spec.alpha, spec.experts, spec.share, spec.lora_dropout, spec.init
            )
        else:
            hidden = linear_features(base)[1]
            adapter = MixtureAdapter(hidden, spec.bottleneck, spec.experts, spec.share, spec.activation, spec.init)
            wrapped = LinearWithAdapter(base, adapter)
        set_submodule(model, name, wrapped.to(next(base.parameters()).dtype))
    return replace(spec, modules=list(names))


def mixture_parameter_names(model: nn.Module) -> list[str]:
    """Parameters owned by mixture modules themselves (not the frozen base layers they wrap)."""
    return [
        f"{module_name}.{param_name}"
        for module_name, module in mixture_modules(model)
        for param_name, _ in module.named_parameters(recurse=False)
    ]


def freeze_all_but(model: nn.Module, trainable: set[str]) -> None:
    """Freeze the base model: only the named parameters (mixture modules and task head) train."""
    names = {name for name, _ in model.named_parameters()}
    missing = trainable - names
    if missing:
        raise AdamixError(f"parameters to train not found in the model: {sorted(missing)[:3]}")
    for name, param in model.named_parameters():
        param.requires_grad = name in trainable


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
