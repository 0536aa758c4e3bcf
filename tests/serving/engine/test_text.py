"""serving.text: incremental detokenisation with stop strings, chat rendering, classification encoding and
padding (in process, no server)."""

from __future__ import annotations

import numpy as np
import pytest
from jinja2.exceptions import SecurityError, TemplateError
from transformers import AutoTokenizer

from adamix_deploy.serving.engine.model_folder import read_model_folder
from adamix_deploy.serving.engine.text import (
    EncodedInput,
    IncrementalDecoder,
    InputTooLong,
    encode_for_classification,
    pad_batch,
    render_chat,
    softmax,
)

from helpers.engine import byte_level_tokenizer

TEXTS = ["café 🙂", "naïve — 日本語 ok", "the END of the story 🙂🙂", "a café and a crêpe\n", "plain ascii"]


@pytest.fixture(scope="module", params=[False, True], ids=["bytes", "merges"])
def tok(request):
    return byte_level_tokenizer(merges=request.param)


@pytest.fixture(scope="module")
def byte_tok():
    return byte_level_tokenizer(merges=False)


def stream(tokenizer, ids: list[int], stop: list[str] | None = None) -> tuple[list[str], bool, int]:
    """Push ids one by one: (deltas including the final flush, whether a stop hit, ids pushed)."""
    decoder = IncrementalDecoder(tokenizer, stop or [])
    deltas = []
    for n, i in enumerate(ids, 1):
        delta, hit = decoder.push(i)
        deltas.append(delta)
        if hit:
            deltas.append(decoder.flush())
            return deltas, True, n
    deltas.append(decoder.flush())
    return deltas, False, len(ids)


# -- incremental decoding -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_full_decode_without_replacement_characters(tok, text):
    ids = tok.encode(text).ids
    deltas, hit, _ = stream(tok, ids)
    assert not hit
    assert "".join(deltas) == tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)


def test_special_tokens_are_skipped(byte_tok):
    eos = byte_tok.token_to_id("<|endoftext|>")
    ids = byte_tok.encode("ab").ids
    deltas, _, _ = stream(byte_tok, [ids[0], eos, ids[1], eos])
    assert "".join(deltas) == "ab"


def test_partial_utf8_is_held_back_until_the_character_is_complete(byte_tok):
    ids = byte_tok.encode("x🙂é").ids
    assert len(ids) == 1 + 4 + 2  # one token per byte
    decoder = IncrementalDecoder(byte_tok, [])
    got = [decoder.push(i) for i in ids]
    assert got == [("x", False), ("", False), ("", False), ("", False), ("🙂", False), ("", False), ("é", False)]
    assert decoder.flush() == ""


def test_a_possible_stop_string_prefix_is_held_back_then_released(byte_tok):
    decoder = IncrementalDecoder(byte_tok, ["STOP"])
    ids = byte_tok.encode("abcSTx").ids
    got = [decoder.push(i)[0] for i in ids]
    # at most len(text) - 3 characters go out: "STO" could still become "STOP"
    assert got == ["", "", "", "a", "b", "c"]
    assert decoder.flush() == "STx"


def test_a_stop_string_split_across_byte_tokens_ends_the_text_before_it(byte_tok):
    ids = byte_tok.encode("hello café STOP world").ids
    deltas, hit, pushed = stream(byte_tok, ids, ["STOP"])
    assert hit and "".join(deltas) == "hello café "
    assert pushed == len(byte_tok.encode("hello café STOP").ids)  # ends on the token completing the stop
    assert deltas[-1] == ""  # nothing left to flush after a stop


def test_a_stop_string_across_merged_tokens_and_inside_one_token():
    tok = byte_level_tokenizer(merges=True)
    ids = tok.encode("the END of the story").ids
    assert tok.encode("the END of the story").tokens[:4] == ["the", "Ġ", "END", "Ġof"]
    deltas, hit, pushed = stream(tok, ids, ["ND o"])  # starts inside "END", ends inside " of"
    assert hit and "".join(deltas) == "the E" and pushed == 4
    deltas, hit, pushed = stream(tok, ids, ["N"])  # inside one token
    assert hit and "".join(deltas) == "the E" and pushed == 3
    deltas, hit, _ = stream(tok, ids, ["story!", ""])  # never completes; "" is ignored
    assert not hit and "".join(deltas) == "the END of the story"


def test_a_stop_string_with_a_multibyte_character(byte_tok):
    ids = byte_tok.encode("un café 🙂 noir").ids
    deltas, hit, _ = stream(byte_tok, ids, ["é 🙂"])
    assert hit and "".join(deltas) == "un caf"
    deltas, hit, _ = stream(byte_tok, ids, ["🙂"])
    assert hit and "".join(deltas) == "un café "


def test_the_stop_string_found_first_in_the_text_wins_among_several(byte_tok):
    ids = byte_tok.encode("one two three").ids
    deltas, hit, _ = stream(byte_tok, ids, ["three", "two"])
    assert hit and "".join(deltas) == "one "


def test_when_one_token_completes_two_stop_strings_the_earlier_one_wins():
    tok = byte_level_tokenizer(merges=True)
    deltas, hit, _ = stream(tok, tok.encode("the END of").ids, ["ND", "EN"])
    assert hit and "".join(deltas) == "the "


# -- chat rendering -------------------------------------------------------------------------------------------
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "name[Zizzi]"},
]

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

STRICT = (
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
)


def test_chat_template_is_rendered_with_the_special_tokens_and_a_generation_prompt():
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    got = render_chat(MESSAGES, CHATML, None, specials)
    assert got == (
        "<s><|system|>Be brief.</s>\n<|user|>Hi</s>\n<|assistant|>Hello</s>\n<|user|>name[Zizzi]</s>\n<|assistant|>"
    )


def test_the_prompt_template_wins_over_the_chat_template_and_drops_system_messages():
    got = render_chat(MESSAGES, CHATML, "{prompt}\n", {"bos_token": "<s>"})
    assert got == "Hi\nHello\nname[Zizzi]\n"
    assert render_chat(MESSAGES[1:2], None, "Q: {prompt}\nA:", {}) == "Q: Hi\nA:"


def test_without_either_template_the_texts_are_joined_by_newlines():
    assert render_chat(MESSAGES, None, None, {}) == "Be brief.\nHi\nHello\nname[Zizzi]\n"


def test_a_template_refusing_the_message_order_raises_a_template_error():
    good = MESSAGES[1:]
    assert render_chat(good, STRICT, None, {}) == "[user] Hi\n[assistant] Hello\n[user] name[Zizzi]\n"
    with pytest.raises(TemplateError, match="roles must alternate"):
        render_chat([MESSAGES[1], MESSAGES[1]], STRICT, None, {})
    with pytest.raises(TemplateError, match="roles must alternate"):
        render_chat([MESSAGES[2], MESSAGES[1]], STRICT, None, {})


def test_chat_templates_run_sandboxed_and_cannot_change_the_messages():
    messages = [dict(m) for m in MESSAGES]
    with pytest.raises(SecurityError):
        render_chat(messages, "{% set _ = messages.append({'role': 'user'}) %}x", None, {})
    with pytest.raises(SecurityError):
        render_chat(messages, "{{ messages.__class__.__mro__[1].__subclasses__() }}", None, {})
    assert messages == MESSAGES


# -- classification inputs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sentiment(exports):
    return read_model_folder(exports["sentiment"]), AutoTokenizer.from_pretrained(exports["sentiment"] / "merged")


def test_encoding_equals_the_transformers_tokenizer_for_texts_and_pairs(sentiment):
    model, reference = sentiment
    inputs = ["the film was great", ["awful plot", "and dull acting"], "it was a movie"]
    got = encode_for_classification(model.tokenizer, model.truncating_tokenizer, inputs, model.max_tokens, False)
    assert len(got) == 3
    for item, x in zip(got, inputs, strict=True):
        ref = reference(*x) if isinstance(x, list) else reference(x)
        assert item.ids == ref["input_ids"]
        assert item.type_ids == ref["token_type_ids"]
    assert 1 in got[1].type_ids and set(got[0].type_ids) == {0}


def test_over_long_inputs_are_refused_naming_the_first_or_cut_when_asked(sentiment):
    model, reference = sentiment
    assert model.max_tokens == 64
    long = " ".join(["good film"] * 60)
    inputs = ["short one", long, long]
    with pytest.raises(InputTooLong, match=r"inputs\[1\] is \d+ tokens; this model takes at most 64"):
        encode_for_classification(model.tokenizer, model.truncating_tokenizer, inputs, 64, False)
    got = encode_for_classification(model.tokenizer, model.truncating_tokenizer, inputs, 64, True)
    ref = reference(long, truncation=True, max_length=64)["input_ids"]
    assert len(got[1].ids) == 64 and got[1].ids == ref
    assert got[1].ids[-1] == reference.sep_token_id and got[1].ids[0] == reference.cls_token_id
    assert got[0].ids == reference("short one")["input_ids"]
    pair = encode_for_classification(model.tokenizer, model.truncating_tokenizer, [[long, "short"]], 64, True)[0]
    assert len(pair.ids) == 64
    assert pair.ids == reference(long, "short", truncation=True, max_length=64)["input_ids"]
    # exactly at the limit is fine without truncation
    at_limit = reference.decode(ref[1:-1])
    assert len(encode_for_classification(model.tokenizer, None, [at_limit], 64, False)[0].ids) == 64


def test_pad_batch_right_pads_to_the_longest_item():
    items = [
        EncodedInput([5, 6, 7], [0, 0, 1]),
        EncodedInput([8, 9, 10, 11, 12], [0, 1, 1, 1, 1]),
        EncodedInput([4], [0]),
    ]
    out = pad_batch(items, pad_token_id=99)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 and v.shape == (3, 5) for v in out.values())
    np.testing.assert_array_equal(out["input_ids"], [[5, 6, 7, 99, 99], [8, 9, 10, 11, 12], [4, 99, 99, 99, 99]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["token_type_ids"], [[0, 0, 1, 0, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    single = pad_batch([EncodedInput([1, 2], [0, 0])], 0)
    assert single["input_ids"].shape == (1, 2) and single["attention_mask"].all()


def test_softmax_rows_sum_to_one_and_survive_large_logits():
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]])
    np.testing.assert_allclose(softmax(logits), [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-12)
