"""The Python-backend model that `adamix-triton` copies into a Triton model repository as ``<model>/1/model.py``.

One file, three roles, picked by the ``adamix_role`` parameter of the model's config.pbtxt, so tokenisation is
written once for both repository layouts:

* ``tokenize`` (ensemble layout, step 1): BYTES ``text`` -> the ONNX graph's token inputs (``input_ids``,
  ``attention_mask``, ``token_type_ids`` as the graph has them), padded per request to a power-of-two width so
  that the onnxruntime model's dynamic batcher can merge requests of similar lengths (it only merges equal
  shapes);
* ``postprocess`` (ensemble layout, step 3): ``logits`` -> ``label`` (BYTES) and ``scores`` (FP32, softmax),
  or ``score`` (FP32) for a regression export;
* ``classify`` (python layout): both of the above around an onnxruntime session, over the whole dynamic batch.

Tokenisation is adamix-serve's (``serving/engine/text.py`` and ``serving/engine/model_folder.py``): the
folder's ``tokenizer.json`` read by the ``tokenizers`` library, no padding, inputs over ``max_tokens`` refused
with the server's message (or cut at ``max_tokens`` when the repository was written with ``--truncate``), right
padding with ``pad_token_id`` and a 0/1 attention mask. adamix-triton computes ``max_tokens`` and ``pad_token_id`` with
the server's own code and writes them as parameters. This file must stand alone: it runs in the Triton Python
backend's stub, whose environment has numpy, tokenizers and (python layout) onnxruntime, not adamix_deploy.
"""

from __future__ import annotations

import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests call the pure functions below)
    pb_utils = None


class InputTooLong(ValueError):
    """An input over the model's token limit, with truncation not requested (adamix-serve answers 422)."""


class TextEncoder:
    """adamix-serve's classification tokenisation, from the parameters adamix-triton wrote."""

    def __init__(self, tokenizer_file: str, max_tokens: int, pad_token_id: int, truncate: bool):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(tokenizer_file)
        self.tokenizer.no_padding()
        self.max_tokens = max_tokens
        self.pad_token_id = pad_token_id
        self.truncate = truncate
        if truncate:
            self.tokenizer.enable_truncation(max_tokens)
        else:
            self.tokenizer.no_truncation()

    @classmethod
    def from_parameters(cls, folder: str, params: dict) -> TextEncoder:
        return cls(
            os.path.join(folder, params["tokenizer_file"]),
            int(params["max_tokens"]),
            int(params["pad_token_id"]),
            params.get("truncate", "false") == "true",
        )

    def encode(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """(ids, type_ids) per text; raises `InputTooLong` naming the first offender, as the server does."""
        encodings = self.tokenizer.encode_batch(texts)
        for i, enc in enumerate(encodings):
            if len(enc.ids) > self.max_tokens:
                raise InputTooLong(
                    f"inputs[{i}] is {len(enc.ids)} tokens; this model takes at most {self.max_tokens} "
                    "(write the repository with adamix-triton --truncate to cut it)"
                )
        return [(enc.ids, enc.type_ids) for enc in encodings]

    def pad(self, items: list[tuple[list[int], list[int]]], width: int | None = None) -> dict[str, np.ndarray]:
        """Right-pad to ``width`` (default: the longest item), exactly as serving/engine/text.py's
        `pad_batch`."""
        width = max([width or 0] + [len(ids) for ids, _ in items])
        ids = np.full((len(items), width), self.pad_token_id, dtype=np.int64)
        type_ids = np.zeros((len(items), width), dtype=np.int64)
        mask = np.zeros((len(items), width), dtype=np.int64)
        for row, (item_ids, item_types) in enumerate(items):
            ids[row, : len(item_ids)] = item_ids
            type_ids[row, : len(item_ids)] = item_types
            mask[row, : len(item_ids)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}

    def bucket_width(self, items: list[tuple[list[int], list[int]]]) -> int:
        """The next power of two (at least 8) over the longest item, never over ``max_tokens``: a handful of
        shapes, so the ONNX model's dynamic batcher finds equal-shaped requests to merge. Padding does not
        change the logits (the attention mask hides it)."""
        longest = max(len(ids) for ids, _ in items)
        width = 8
        while width < longest:
            width *= 2
        return max(longest, min(width, self.max_tokens))


def texts_of(array: np.ndarray) -> list[str]:
    """A BYTES tensor of shape [n, 1] (one text per batch row) to n strings."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(array, dtype=object).ravel()]


def graph_feed(encoded: dict[str, np.ndarray], inputs: dict[str, str]) -> dict[str, np.ndarray]:
    """The tokenizer's arrays the graph takes, in the graph's own integer type ({name: numpy dtype})."""
    return {name: encoded[name].astype(dtype) for name, dtype in inputs.items()}


def postprocess(logits: np.ndarray, labels: list[str] | None) -> dict[str, np.ndarray]:
    """adamix-serve's results as Triton outputs: softmax in float64 (as the server computes it), the arg-max
    label; a regression export (no labels) gives its single logit as ``score``."""
    logits = np.asarray(logits)
    if not labels:
        return {"score": logits[:, :1].astype(np.float32)}
    shifted = logits.astype(np.float64) - logits.astype(np.float64).max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=-1, keepdims=True)
    names = np.array([[labels[int(row.argmax())].encode("utf-8")] for row in probs], dtype=object)
    return {"label": names, "scores": probs.astype(np.float32)}


def open_session(path: str, gpu: bool, device_id: int, threads: int):
    """An onnxruntime session: CUDA first on a KIND_GPU instance when this onnxruntime has it, else CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    providers: list = ["CPUExecutionProvider"]
    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ort.InferenceSession(path, options, providers=providers)


class TritonPythonModel:
    """Triton's entry point; `initialize` reads the parameters adamix-triton wrote into config.pbtxt."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.role = params["adamix_role"]
        folder = os.path.join(args["model_repository"], args["model_version"])
        labels = json.loads(params.get("labels", "null"))
        self.labels = labels or None
        self.inputs = json.loads(params.get("onnx_inputs", "{}"))
        self.encoder = TextEncoder.from_parameters(folder, params) if self.role != "postprocess" else None
        self.session = None
        if self.role == "classify":
            self.session = open_session(
                os.path.join(folder, params["onnx_file"]),
                gpu=args.get("model_instance_kind") == "GPU",
                device_id=int(args.get("model_instance_device_id") or 0),
                threads=int(params.get("intra_op_threads", "0")),
            )

    def execute(self, requests: list) -> list:
        if self.role == "tokenize":
            return [self._respond(self._tokenize, request) for request in requests]
        if self.role == "postprocess":
            return [self._respond(self._postprocess, request) for request in requests]
        return self._classify(requests)

    def _respond(self, work, request):
        """One request's response; a bad input fails that request alone, as a 4xx would at adamix-serve."""
        try:
            outputs = work(request)
        except (InputTooLong, UnicodeDecodeError) as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, array) for name, array in outputs.items()])

    def _tokenize(self, request) -> dict[str, np.ndarray]:
        items = self.encoder.encode(texts_of(pb_utils.get_input_tensor_by_name(request, "text").as_numpy()))
        return graph_feed(self.encoder.pad(items, self.encoder.bucket_width(items)), self.inputs)

    def _postprocess(self, request) -> dict[str, np.ndarray]:
        return postprocess(pb_utils.get_input_tensor_by_name(request, "logits").as_numpy(), self.labels)

    def _classify(self, requests: list) -> list:
        """The whole dynamic batch in one onnxruntime call, padded to its longest input as adamix-serve's
        batcher does; requests whose inputs are refused get their error and stay out of the batch."""
        encoded: list = []
        for request in requests:
            try:
                texts = texts_of(pb_utils.get_input_tensor_by_name(request, "text").as_numpy())
                encoded.append(self.encoder.encode(texts))
            except (InputTooLong, UnicodeDecodeError) as e:
                encoded.append(e)
        items = [item for batch in encoded if not isinstance(batch, Exception) for item in batch]
        logits = None
        if items:
            feed = graph_feed(self.encoder.pad(items), self.inputs)
            logits = self.session.run(["logits"], feed)[0]
        responses, start = [], 0
        for batch in encoded:
            if isinstance(batch, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(batch))))
                continue
            outputs = postprocess(logits[start : start + len(batch)], self.labels)
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()]))
        return responses
