"""Pure text helpers of the demo page: the E2E meaning representation, the model card, speed lines.

Kept free of gradio so they are cheap to test and to reuse.
"""

from __future__ import annotations

# The E2E NLG challenge's slots, in the order its meaning representations list them.
E2E_SLOTS = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")
E2E_VALUES = {
    "eatType": ["coffee shop", "pub", "restaurant"],
    "food": ["English", "French", "Italian", "Japanese", "Chinese", "Indian", "Fast food"],
    "priceRange": ["cheap", "less than £20", "£20-25", "moderate", "high", "more than £30"],
    "customer rating": ["low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"],
    "area": ["city centre", "riverside"],
    "familyFriendly": ["yes", "no"],
}


def meaning_representation(values: dict[str, str | None]) -> str:
    """``name[The Eagle], eatType[coffee shop], ...`` in slot order; empty slots are left out."""
    parts = []
    for slot in E2E_SLOTS:
        value = (values.get(slot) or "").strip()
        if value:
            parts.append(f"{slot}[{value}]")
    return ", ".join(parts)


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _provider(providers: list[str] | None) -> str:
    if not providers:
        return "not loaded yet"
    first = providers[0]
    return {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA"}.get(first, first)


def _parity_rows(parity: dict | None) -> list[str]:
    if not parity or not parity.get("stages"):
        return ["| (no parity figures in the manifest) | | |"]
    rows = []
    for stage, figures in parity["stages"].items():
        diff = figures.get("max_abs_logit_diff")
        if "top1_agreement" in figures:
            agreement = f"top-1 agreement {figures['top1_agreement']:.1%}"
        elif "greedy_tokens_identical" in figures:
            agreement = f"greedy tokens identical {figures['greedy_tokens_identical']:.1%}"
        else:
            agreement = ""
        rows.append(f"| {stage} | {'' if diff is None else f'{diff:.2e}'} | {agreement} |")
    return rows


def model_card_markdown(card: dict) -> str:
    """The model card panel: what the export's manifest says (as ``GET /v1/models`` reports it)."""
    share = card.get("trainable_share")
    method = {"lora": "LoRA", "adapter": "adapter"}.get(card.get("method") or "", card.get("method") or "unknown")
    parity = card.get("parity") or {}
    reference = parity.get("reference", "the mixture")
    lines = [
        f"| Model | **{card['id']}** ({card['task']}) |",
        "|---|---|",
        f"| Base model | {card.get('base_model') or 'unknown'} |",
        *(
            [f"| Adapter of | {card['parent']} (an onnxruntime LoRA adapter on its shared graph) |"]
            if card.get("parent")
            else []
        ),
        f"| Method | {method} mixture (AdaMix) |",
        f"| Experts | {card.get('experts') if card.get('experts') is not None else 'unknown'} |",
        f"| Merge method | {card.get('merge_method') or 'unknown'} |",
        f"| Trainable share | {'unknown' if share is None else f'{share * 100:.2f} %'} |",
        f"| ONNX file | {card.get('onnx_file')} ({_size(card.get('onnx_bytes'))}) |",
        f"| Provider | {_provider(card.get('providers'))} |",
        f"| Max tokens | {card.get('max_tokens')} |",
        "",
        f"Parity against {reference}:",
        "",
        "| Stage | max \\|Δlogit\\| | agreement |",
        "|---|---|---|",
        *_parity_rows(parity),
    ]
    return "\n".join(lines)


def generation_stats(
    completion_tokens: int, seconds: float, first_token_seconds: float | None, reason: str
) -> str:
    rate = completion_tokens / seconds if seconds > 0 else 0.0
    first = "" if first_token_seconds is None else f", first token after {first_token_seconds * 1000:.0f} ms"
    why = {"length": "reached max new tokens", "stop": "end of text"}.get(reason, reason)
    return f"{completion_tokens} tokens in {seconds * 1000:.0f} ms ({rate:.1f} tokens/s){first}; {why}"
