"""adamix-demo, the Gradio page: launched as a subprocess in both modes (in-process over the export folders,
and client of a real adamix-serve), driven through gradio_client and a headless Chromium. Its answers are
checked against the server's own HTTP answers for the same inputs and settings."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from adamix_deploy.demo.backend import DemoError
from adamix_deploy.demo.formatting import E2E_SLOTS, meaning_representation
from adamix_deploy.demo.http_backend import HTTPBackend
from adamix_deploy.demo.inprocess_backend import InProcessBackend
from adamix_deploy.testing.processes import BIN, ServerProcess, ServiceProcess, free_port

from helpers import ARTIFACTS
from helpers.cli import run

pytestmark = pytest.mark.integration

CAP = 16  # the server's --max-new-tokens
KEY = "demo-test-key"
TEXTS = ["the film was great", "awful plot and dull acting"]
MR = {"name": "The Mill", "food": "Italian"}  # -> "name[The Mill], food[Italian]"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


class DemoProcess(ServiceProcess):
    """``adamix-demo ARGS --port P`` in a subprocess; `wait` returns once the page answers."""

    def __init__(self, *args: str, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        command = [BIN / "adamix-demo", *args, "--port", str(self.port)]
        super().__init__(command, self.url, log_path=log_dir / f"demo-{self.port}.log", env=env)
        self._client: Client | None = None

    def wait(self, timeout: float = 90) -> DemoProcess:
        self.wait_ready(timeout)
        return self

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, verbose=False, analytics_enabled=False)
        return self._client

    def stop(self) -> None:
        super().stop(20)


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    logs = tmp_path_factory.mktemp("demo-logs")
    (logs / "keys").write_text(KEY + "\n")
    options = ["--max-new-tokens", str(CAP), "--threads", "1", "--api-key-file", str(logs / "keys")]
    with ServerProcess(list(exports.values()), *options, log_dir=logs) as srv:
        yield srv


@pytest.fixture(scope="module")
def demos(exports, server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("demo-logs")
    (logs / "keys").write_text(KEY + "\n")
    started = {
        "in-process": DemoProcess(*exports.values(), "--threads", "1", log_dir=logs),
        "client": DemoProcess("--server", server.url, "--api-key-file", logs / "keys", log_dir=logs),
    }
    try:  # both start at once: most of the wait is importing gradio
        for demo in started.values():
            demo.wait()
        yield started
    finally:
        for demo in started.values():
            demo.stop()


@pytest.fixture(params=["in-process", "client"])
def demo(request, demos) -> DemoProcess:
    return demos[request.param]


def server_post(server, path: str, body: dict) -> dict:
    response = httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def call(demo: DemoProcess, *args, api_name: str):
    """One demo endpoint through gradio_client; a bounded wait, so a hung handler fails instead of blocking."""
    return demo.client.submit(*args, api_name=api_name).result(timeout=30)


def demo_generate(demo: DemoProcess, model: str, fields: dict, prompt: str = "", **sampling):
    """The final (text, speed line) of the demo's /generate, and every streamed update."""
    s = {"max_new_tokens": CAP, "temperature": 0, "top_p": 1, "top_k": 0, "seed": None, **sampling}
    values = [fields.get(slot, "") for slot in E2E_SLOTS]
    job = demo.client.submit(
        model, *values, prompt, s["max_new_tokens"], s["temperature"], s["top_p"], s["top_k"], s["seed"],
        api_name="/generate",
    )  # fmt: skip
    final = job.result(timeout=30)
    return final, job.outputs()


# -- the command line --------------------------------------------------------------------------------------------
def test_cli_wants_folders_or_a_server_and_says_why_in_one_line(exports, server, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        ((), "give export folders"),
        ((exports["sentiment"], "--server", server.url), "not both"),
        ((tmp_path / "missing",), "not a folder"),
        (("--server", dead), "cannot reach adamix-serve"),
        (("--server", server.url), "HTTP 401"),  # the server wants a key
        ((exports["sentiment"], "--api-key-file", tmp_path), "--api-key-file is for client mode"),
    ]
    for args, message in cases:
        result = run("adamix-demo", *args, check=False, debug=False)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("adamix-demo: error: ") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_demo_prints_its_url(demos):
    for demo in demos.values():
        # the page may answer a moment before the line is printed (it is printed once launch returns)
        deadline = time.monotonic() + 10
        while f"on http://127.0.0.1:{demo.port}/" not in demo.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"on http://127.0.0.1:{demo.port}/" in demo.log()


# -- NLU -------------------------------------------------------------------------------------------------------
def test_classify_equals_the_server(demo, server):
    for text, second in [(TEXTS[0], ""), (TEXTS[1], ""), (TEXTS[0], "it was a movie")]:
        scores, latency = call(demo, "sentiment", text, second, api_name="/classify")
        expected = server_post(
            server, "/v1/models/sentiment/classify", {"inputs": [[text, second] if second else text]}
        )["results"][0]
        assert scores["label"] == expected["label"]
        got = {c["label"]: c["confidence"] for c in scores["confidences"]}
        assert got == pytest.approx(expected["scores"], abs=1e-6)
        assert latency.startswith(expected["label"] + " in ") and latency.endswith(" ms")


def test_model_cards_show_the_manifest(demo, exports):
    for model, api in [("sentiment", "/model_card_nlu"), ("restaurants", "/model_card_nlg")]:
        card = call(demo, model, api_name=api)
        manifest = json.loads((exports[model] / "adamix_manifest.json").read_text())
        onnx = manifest["parity"]["stages"]["onnx_fp32"]
        agreement = "top-1 agreement" if model == "sentiment" else "greedy tokens identical"
        for expected in [
            f"| Base model | {manifest['base_model']['name']} |",
            "| Method | LoRA mixture (AdaMix) |",
            "| Experts | 2 |",
            "| Merge method | average |",
            f"| Trainable share | {manifest['parameters']['trainable_share'] * 100:.2f} % |",
            "| Provider | CPU |",
            f"| onnx_fp32 | {onnx['max_abs_logit_diff']:.2e} | {agreement} 100.0% |",
            "| ONNX file | model.onnx (",
        ]:
            assert expected in card, (expected, card)


# -- NLG -------------------------------------------------------------------------------------------------------
def test_greedy_generation_streams_the_servers_text(demo, server):
    expected = server_post(
        server,
        "/v1/models/restaurants-gpt2/generate",
        {"prompt": meaning_representation(MR), "max_new_tokens": CAP},
    )["outputs"][0]
    (text, stats), updates = demo_generate(demo, "restaurants-gpt2", MR)
    assert text == expected["text"] and text
    assert stats.startswith(f"{CAP} tokens in ") and "tokens/s" in stats
    streamed = [u[0] for u in updates]
    assert len(streamed) > 3  # really token by token, not one piece at the end
    assert all(b.startswith(a) for a, b in zip(streamed, streamed[1:], strict=False))


def test_prompt_box_and_sampling_settings_reach_the_model(demo, server):
    """The free-text prompt wins over the fields; temperature, top_p, top_k and seed are passed on."""
    prompt = "Write one sentence about a quiet library."
    sampling = {"temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 7}
    body = {"prompt": prompt, "max_new_tokens": 12, **sampling}
    expected = server_post(server, "/v1/models/restaurants/generate", body)["outputs"][0]["text"]
    (text, _), _ = demo_generate(demo, "restaurants", MR, prompt, max_new_tokens=12, **sampling)
    assert text == expected
    greedy = server_post(server, "/v1/models/restaurants/generate", {**body, "temperature": 0})["outputs"][0]
    assert greedy["text"] != expected  # so the comparison above would notice a dropped temperature


def test_meaning_representation_in_e2e_format(demos):
    fields = {
        "name": "The Eagle", "eatType": "coffee shop", "food": "French", "priceRange": "moderate",
        "area": "riverside", "familyFriendly": "yes", "near": "Burger King",
    }  # fmt: skip
    expected = (
        "name[The Eagle], eatType[coffee shop], food[French], priceRange[moderate], area[riverside], "
        "familyFriendly[yes], near[Burger King]"
    )
    assert meaning_representation(fields) == expected
    values = [fields.get(slot, "") for slot in E2E_SLOTS]
    assert call(demos["in-process"], *values, api_name="/meaning_representation") == expected
    assert meaning_representation({"name": "  ", "near": "Café Rouge"}) == "near[Café Rouge]"


# -- errors ------------------------------------------------------------------------------------------------------
def test_server_refusals_show_the_servers_message(demos):
    with pytest.raises(AppError) as caught:
        demo_generate(demos["client"], "restaurants", MR, max_new_tokens=CAP + 1)
    message = str(caught.value)
    assert f"HTTP 422 (request refused): max_new_tokens is {CAP + 1}; this server allows at most {CAP}" in message
    assert "Traceback" not in message


def test_bad_input_shows_a_readable_message(demo):
    with pytest.raises(AppError, match="Enter a text to classify"):
        call(demo, "sentiment", "   ", "", api_name="/classify")
    with pytest.raises(AppError, match="Fill in at least one field, or write a prompt"):
        demo_generate(demo, "restaurants", {})
    # the tiny Llama has 128 positions: the runtime (or the server) refuses prompt + 128 new tokens
    with pytest.raises(AppError, match="takes at most 128 in all|allows at most"):
        demo_generate(demo, "restaurants", MR, max_new_tokens=128)


def test_http_backend_errors_are_one_readable_line(server):
    dead = HTTPBackend(f"http://127.0.0.1:{free_port()}", KEY)
    with pytest.raises(DemoError, match="cannot reach adamix-serve at .* is it running"):
        asyncio.run(dead.classify("sentiment", "x"))
    with pytest.raises(DemoError, match=r"HTTP 401 \(missing or wrong API key\): missing or wrong API key"):
        asyncio.run(HTTPBackend(server.url, "wrong").classify("sentiment", "x"))
    backend = HTTPBackend(server.url, KEY)
    with pytest.raises(DemoError, match=r"HTTP 404 \(not found\): no model named 'nope'"):
        asyncio.run(backend.classify("nope", "x"))
    for status, words in [(429, "server busy"), (504, "timed out")]:
        body = {"error": {"message": "the server's words", "type": "x", "code": status}}
        with pytest.raises(DemoError, match=rf"HTTP {status} \({words}\): the server's words"):
            backend._json(httpx.Response(status, json=body))
    with pytest.raises(DemoError, match=r"HTTP 502 \(error\): Bad Gateway"):
        backend._json(httpx.Response(502, text="Bad Gateway"))


def test_a_real_busy_and_a_real_timeout_reach_the_demo_as_readable_lines(exports, tmp_path):
    # batches wait 3 s to fill, the timeout is 1 s, one request may wait: the first gets 504, the second 429
    options = ["--max-batch-wait-ms", "3000", "--max-queue", "1", "--request-timeout", "1"]
    with ServerProcess([exports["sentiment"]], *options, log_dir=tmp_path) as srv:
        backend = HTTPBackend(srv.url, None)

        async def two_at_once():
            first = asyncio.ensure_future(backend.classify("sentiment", TEXTS[0]))
            await asyncio.sleep(0.2)
            second = asyncio.ensure_future(backend.classify("sentiment", TEXTS[1]))
            return await asyncio.gather(first, second, return_exceptions=True)

        first, second = asyncio.run(two_at_once())
    assert isinstance(first, DemoError) and isinstance(second, DemoError)
    assert "HTTP 504 (timed out): model 'sentiment' did not answer within the 1 s request timeout" in str(first)
    assert "HTTP 429 (server busy): model 'sentiment' is at its queue limit" in str(second)


# -- the event loop --------------------------------------------------------------------------------------------
def test_in_process_models_start_once_on_the_loop_that_uses_them(exports, server):
    """Gradio runs handlers on its own loop; the runtimes' schedulers must start there (lazily, once) and
    refuse another loop rather than hang. (The in-process gradio_client tests run this on Gradio's loop.)"""
    backend = InProcessBackend([exports["sentiment"]], threads=1)
    runtime = backend._runtimes["sentiment"]
    starts = []
    real_start = runtime.start

    async def counted_start():
        starts.append(asyncio.get_running_loop())
        await real_start()

    runtime.start = counted_start

    async def first_requests_at_once():
        predictions = await asyncio.gather(*(backend.classify("sentiment", t) for t in TEXTS * 3))
        return predictions, await backend.card("sentiment")

    predictions, card = asyncio.run(first_requests_at_once())
    assert len(starts) == 1 and card["ready"] and card["providers"] == ["CPUExecutionProvider"]
    expected = server_post(server, "/v1/models/sentiment/classify", {"inputs": TEXTS})["results"]
    for prediction, reference in zip(predictions, expected * 3, strict=True):
        assert prediction.label == reference["label"]
        assert prediction.scores == pytest.approx(reference["scores"], abs=1e-6)
    with pytest.raises(RuntimeError, match="started on another event loop"):
        asyncio.run(backend.classify("sentiment", TEXTS[0]))


# -- a real browser --------------------------------------------------------------------------------------------
def test_browser_classifies_a_sentence(demos, server, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian chromium and chromium-driver (scripts/test.sh installs them with apt-get)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(demos["in-process"].url)
        wait = WebDriverWait(driver, 30)
        box = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "textarea[placeholder='A sentence to classify']")
        )
        box.send_keys(TEXTS[1])
        driver.find_element(By.XPATH, "//button[normalize-space()='Classify']").click()
        shown = wait.until(
            lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, "#nlu-scores [data-testid='label-output-value']") if e.text]
        )  # fmt: skip
        expected = server_post(server, "/v1/models/sentiment/classify", {"inputs": [TEXTS[1]]})["results"][0]
        assert shown[0] in ("negative", "positive") and shown[0] == expected["label"]
        latency = driver.find_element(By.CSS_SELECTOR, "#nlu-latency textarea, #nlu-latency input")
        assert latency.get_attribute("value").endswith(" ms")
        screenshot = tmp_path / "demo_screenshot.png"
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the test artefact: kept where CI can collect it (git-ignored)
    target = ARTIFACTS / "demo_screenshot.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, target)
