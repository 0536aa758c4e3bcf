"""The OpenAI-compatible routes through the official `openai` client: completions, chat, streaming, errors."""

from __future__ import annotations

import pytest

from helpers.http import (
    PROMPTS,
    post,
)

pytestmark = pytest.mark.integration


def test_openai_client_completions_chat_and_streaming(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} == {"sentiment", "restaurants", "restaurants-gpt2"}
    ours = post(
        server, "/v1/models/restaurants/generate", {"prompt": PROMPTS[0], "max_new_tokens": 10, "apply_template": False}
    ).json()["outputs"][0]["text"]  # fmt: skip
    completion = client.completions.create(model="restaurants", prompt=PROMPTS[0], max_tokens=10, temperature=0)
    assert completion.choices[0].text == ours and completion.usage.completion_tokens == 10
    chunks = list(
        client.completions.create(
            model="restaurants", prompt=PROMPTS[0], max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == ours
    # chat: the export's prompt template formats the user message, as in training
    templated = post(server, "/v1/models/restaurants/generate", {"prompt": PROMPTS[2], "max_new_tokens": 8}).json()
    chat = client.chat.completions.create(
        model="restaurants", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content == templated["outputs"][0]["text"]
    assert chat.usage.total_tokens == templated["usage"]["total_tokens"]
    stream = client.chat.completions.create(
        model="restaurants", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    with pytest.raises(Exception) as error:  # the client raises its NotFoundError with our message
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert getattr(error.value, "status_code", None) == 404 and "nope" in str(error.value)
