"""Helpers for the in-process serving tests: a byte-level tokenizer built here, a tokenizer that decodes ids to
"[id]" text (so a job's emitted text gives back its exact token ids), an event collector for generation jobs,
and loading an export folder as the server does."""

from __future__ import annotations

import re
import threading
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from adamix_deploy.serving.engine.model_folder import ServedModel, read_model_folder
from adamix_deploy.serving.engine.results import Failed, Finished, TextDelta

BYTE_CORPUS = ["the cat sat on the mat", "END of the story", "stop here STOP", "a café and a crêpe"] * 4


def byte_level_tokenizer(merges: bool = False) -> Tokenizer:
    """Byte-level BPE with "<|endoftext|>" as id 0. Without merges every UTF-8 byte is its own token, so "é" is
    two tokens and "🙂" four; with merges, frequent words of BYTE_CORPUS become multi-character tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400 if merges else 257,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(BYTE_CORPUS, trainer)
    return tok


class IdTokenizer:
    """Decodes token ids to "[id][id]...": what `IncrementalDecoder` needs, and the text maps back to ids."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"[{i}]" for i in ids)


def ids_of(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\[(\d+)\]", text)]


class Events:
    """A job's `emit`: collects the events (from the engine thread) and signals the end."""

    def __init__(self):
        self.events: list = []
        self.done = threading.Event()
        self.ended_at: float | None = None  # time.monotonic() of Finished or Failed
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        with self._lock:
            self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.ended_at = time.monotonic()
            self.done.set()

    def wait(self, timeout: float = 30) -> Events:
        assert self.done.wait(timeout), f"the job did not finish in {timeout} s: {self.events}"
        return self

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def tokens(self) -> list[int]:
        return ids_of(self.text)

    @property
    def finished(self) -> Finished:
        ends = [e for e in self.events if not isinstance(e, TextDelta)]
        assert len(ends) == 1 and isinstance(ends[0], Finished), self.events
        assert self.events[-1] is ends[0], "events after Finished"
        return ends[0]


def load_model(folder) -> ServedModel:
    model = read_model_folder(folder)
    model.load(threads=1, gpu=False)
    return model
