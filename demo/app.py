"""The Gradio page: an NLU tab (classification), an NLG tab (E2E-style generation, streamed) and a model card
per tab. Every answer comes from a `demo.backend.Backend`; every failure is shown as one readable line
(``gr.Error``), never a traceback.

Event handlers have explicit ``api_name``s (``/classify``, ``/generate``, ``/model_card_nlu``,
``/model_card_nlg``, ``/meaning_representation``) so ``gradio_client`` and scripts can call them.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import gradio as gr

from adamix_deploy.demo.backend import Backend, DemoError, Sampling
from adamix_deploy.demo.formatting import (
    E2E_SLOTS,
    E2E_VALUES,
    generation_stats,
    meaning_representation,
    model_card_markdown,
)
from adamix_deploy.serving.engine.results import Finished

log = logging.getLogger("adamix.demo")

NLU_EXAMPLES = [
    ["A warm, funny and beautifully acted film.", ""],
    ["The plot was thin and the pacing painfully slow.", ""],
    ["the film was great", "it was a movie"],
]
NLG_EXAMPLES = [
    ["The Eagle", "coffee shop", "French", "moderate", "", "riverside", "yes", "Burger King", ""],
    ["Blue Spice", "pub", "Italian", "", "high", "city centre", "", "", ""],
    ["", "", "", "", "", "", "", "", "Write one sentence about a quiet library."],
]
SLOT_LABELS = {"eatType": "Eat type", "priceRange": "Price range", "familyFriendly": "Family friendly"}


@contextmanager
def readable_errors() -> Iterator[None]:
    """Turn any failure into a message in the page (a `gr.Error`), never a stack trace."""
    try:
        yield
    except gr.Error:
        raise
    except DemoError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except Exception as e:  # a bug: the log keeps the traceback, the page gets one line
        log.exception("demo handler failed")
        raise gr.Error(f"internal error: {type(e).__name__}: {e} (the demo's log has the details)") from None


def _example_label(row: list[str]) -> str:
    return row[-1] or meaning_representation(dict(zip(E2E_SLOTS, row[:-1], strict=True)))


def build_demo(backend: Backend) -> gr.Blocks:
    cards = backend.models()
    nlu = [c["id"] for c in cards if c["task"] in ("classification", "regression")]
    nlg = [c["id"] for c in cards if c["task"] == "generation"]
    longest = max((c["max_tokens"] for c in cards if c["task"] == "generation"), default=512)

    async def model_card(model: str) -> str:
        with readable_errors():
            return model_card_markdown(await backend.card(model))

    with gr.Blocks(title="AdaMix demo", analytics_enabled=False) as demo:
        gr.Markdown(f"# AdaMix demo\nMerged AdaMix mixtures on ONNX Runtime ({backend.description}).")
        with gr.Tabs():
            if nlu:
                with gr.Tab("NLU: classify", id="nlu"):
                    model, card = _nlu_tab(backend, nlu)
                model.change(model_card, model, card, api_name="model_card_nlu")
                # opening the page starts (in-process: loads) the models, so the first click is not the slow one
                demo.load(model_card, model, card, api_visibility="private")
            if nlg:
                with gr.Tab("NLG: generate", id="nlg"):
                    model, card = _nlg_tab(backend, nlg, longest)
                model.change(model_card, model, card, api_name="model_card_nlg")
                demo.load(model_card, model, card, api_visibility="private")
    return demo


def _nlu_tab(backend: Backend, models: list[str]) -> tuple[gr.Dropdown, gr.Markdown]:
    async def classify(model: str, text: str, second_text: str) -> tuple[dict[str, float] | str, str]:
        with readable_errors():
            if not (text or "").strip():
                raise DemoError("Enter a text to classify.")
            start = time.perf_counter()
            prediction = await backend.classify(model, text, (second_text or "").strip() or None)
            ms = (time.perf_counter() - start) * 1000
            if prediction.score is not None:  # a regression model (STS-B style): one number
                return f"{prediction.score:.3f}", f"score {prediction.score:.3f} in {ms:.1f} ms"
            return prediction.scores, f"{prediction.label} in {ms:.1f} ms"

    model = gr.Dropdown(models, value=models[0], label="Model", visible=len(models) > 1)
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="Text", lines=3, placeholder="A sentence to classify")
            second = gr.Textbox(
                label="Second text (optional, for sentence pairs)",
                info="When filled in, the model gets the pair [text, second text].",
                lines=2,
            )
            button = gr.Button("Classify", variant="primary")
            gr.Examples(NLU_EXAMPLES, inputs=[text, second], label="Examples")
        with gr.Column():
            scores = gr.Label(label="Predicted label and scores", elem_id="nlu-scores")
            latency = gr.Textbox(label="Latency", interactive=False, elem_id="nlu-latency")
    with gr.Accordion("Model card", open=True):
        card = gr.Markdown("Loading the model…")
    button.click(classify, [model, text, second], [scores, latency], api_name="classify")
    text.submit(classify, [model, text, second], [scores, latency], api_visibility="private")
    return model, card


def _nlg_tab(backend: Backend, models: list[str], longest: int) -> tuple[gr.Dropdown, gr.Markdown]:
    async def generate(
        model: str, name: str, eat_type: str, food: str, price_range: str, customer_rating: str, area: str,
        family_friendly: str, near: str, prompt: str, max_new_tokens: float, temperature: float, top_p: float,
        top_k: float, seed: float | None,
    ) -> AsyncIterator[tuple[str, str]]:  # fmt: skip
        with readable_errors():
            fields = [name, eat_type, food, price_range, customer_rating, area, family_friendly, near]
            text = (prompt or "").strip() or meaning_representation(dict(zip(E2E_SLOTS, fields, strict=True)))
            if not text:
                raise DemoError("Fill in at least one field, or write a prompt.")
            sampling = Sampling(
                int(max_new_tokens), float(temperature), float(top_p), int(top_k), None if seed is None else int(seed)
            )  # fmt: skip
            start, first, output = time.perf_counter(), None, ""
            async for piece in backend.generate_stream(model, text, sampling):
                if isinstance(piece, Finished):
                    seconds = time.perf_counter() - start
                    yield output, generation_stats(piece.completion_tokens, seconds, first, piece.reason)
                    return
                first = first if first is not None else time.perf_counter() - start
                output += piece
                yield output, "generating…"

    def preview(*fields: str) -> str:
        return meaning_representation(dict(zip(E2E_SLOTS, fields, strict=True)))

    model = gr.Dropdown(models, value=models[0], label="Model", visible=len(models) > 1)
    with gr.Row():
        with gr.Column():
            with gr.Row():
                slots = [_slot_input(slot) for slot in E2E_SLOTS]
            mr = gr.Textbox(label="Meaning representation (from the fields)", interactive=False)
            prompt = gr.Textbox(label="Free-text prompt (used instead of the fields when not empty)")
            with gr.Accordion("Sampling", open=False):
                max_new = gr.Slider(1, longest, value=min(64, longest), step=1, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top_p")
                top_k = gr.Slider(0, 200, value=0, step=1, label="top_k (0 = no cut)")
                seed = gr.Number(None, precision=0, minimum=0, label="Seed (empty = random)")
            button = gr.Button("Generate", variant="primary")
            gr.Examples(
                NLG_EXAMPLES, inputs=[*slots, prompt], label="Examples",
                example_labels=[_example_label(row) for row in NLG_EXAMPLES],
            )  # fmt: skip
        with gr.Column():
            output = gr.Textbox(label="Output", lines=6, interactive=False, elem_id="nlg-output")
            stats = gr.Textbox(label="Speed", interactive=False, elem_id="nlg-stats")
    with gr.Accordion("Model card", open=True):
        card = gr.Markdown("Loading the model…")
    gr.on(
        [s.change for s in slots], preview, slots, mr, api_name="meaning_representation",
        queue=False, show_progress="hidden", trigger_mode="always_last",
    )  # fmt: skip
    button.click(
        generate, [model, *slots, prompt, max_new, temperature, top_p, top_k, seed], [output, stats],
        api_name="generate",
    )  # fmt: skip
    return model, card


def _slot_input(slot: str) -> gr.Component:
    label = SLOT_LABELS.get(slot, slot.capitalize())
    if slot not in E2E_VALUES:
        return gr.Textbox(label=label)
    # custom values allowed: the E2E data has more values than the usual ones listed
    choices = [("—", ""), *[(v, v) for v in E2E_VALUES[slot]]]
    return gr.Dropdown(choices, value="", label=label, allow_custom_value=True)


def launch(backend: Backend, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted; prints its URL."""
    # Gradio's own use of a renamed Starlette constant warns on every request; not the user's concern.
    warnings.filterwarnings("ignore", message=".*HTTP_422_UNPROCESSABLE_ENTITY.*is deprecated")
    demo = build_demo(backend)
    # The runtimes batch and queue requests themselves, so Gradio may pass several on at once.
    demo.queue(default_concurrency_limit=16)
    try:
        _, url, _ = demo.launch(
            server_name=host, server_port=port, quiet=True, prevent_thread_lock=True, footer_links=["api"]
        )
    except OSError as e:
        raise DemoError(f"cannot listen on {host}:{port}: {e}") from None
    names = ", ".join(c["id"] for c in backend.models())
    print(f"adamix-demo: {names} ({backend.description}) on {url}", flush=True)
    demo.block_thread()
