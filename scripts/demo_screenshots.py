"""The README's demo pictures: runs adamix-demo in-process on the quickstart's exports and photographs both
tabs in headless Chromium (Debian's chromium and chromium-driver, as the browser test uses).

    .venv/bin/python scripts/demo_screenshots.py [--deploy runs/quickstart/deploy] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
PORT = 7899


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deploy", type=Path, default=ROOT / "runs" / "quickstart" / "deploy")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    folders = [args.deploy / "sentiment", args.deploy / "restaurants"]
    if not all((f / "adamix_manifest.json").exists() for f in folders):
        sys.exit(f"no quickstart exports in {args.deploy}: run `bash scripts/quickstart.sh --no-serve` first")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    demo = subprocess.Popen([str(Path(sys.executable).parent / "adamix-demo"), *map(str, folders), "--port", str(PORT)],
                            env=env, stdout=subprocess.DEVNULL)  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ]:
        options.add_argument(flag)
    driver = None
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.get(f"http://127.0.0.1:{PORT}/")
        wait = WebDriverWait(driver, 120)
        box = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "textarea[placeholder='A sentence to classify']")
        )
        box.send_keys("A warm, funny and beautifully acted film.")
        driver.find_element(By.XPATH, "//button[normalize-space()='Classify']").click()
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#nlu-latency textarea, #nlu-latency input").get_attribute(
                "value"
            )
        )
        # again: the first click also waited for the models to load, which is not what the picture should show
        driver.find_element(By.XPATH, "//button[normalize-space()='Classify']").click()
        time.sleep(1.5)
        driver.save_screenshot(str(args.out / "demo_nlu.png"))
        tab = [
            e
            for e in driver.find_elements(By.XPATH, "//button[normalize-space()='NLG: generate']")
            if e.is_displayed()
        ]
        tab[0].click()
        wait.until(
            lambda d: any(
                e.is_displayed() for e in d.find_elements(By.XPATH, "//button[normalize-space()='Generate']")
            )
        )
        examples = [
            e for e in driver.find_elements(By.CSS_SELECTOR, "button, td") if e.text.startswith("name[The Eagle]")
        ]
        if examples:  # the first example fills the record fields
            driver.execute_script("arguments[0].click();", examples[0])
        time.sleep(0.5)
        [e for e in driver.find_elements(By.XPATH, "//button[normalize-space()='Generate']") if e.is_displayed()][
            0
        ].click()
        wait.until(
            lambda d: (
                "tokens/s"
                in (
                    d.find_element(By.CSS_SELECTOR, "#nlg-stats textarea, #nlg-stats input").get_attribute("value")
                    or ""
                )
            )
        )
        time.sleep(0.5)
        driver.save_screenshot(str(args.out / "demo_nlg.png"))
        print(f"wrote {args.out / 'demo_nlu.png'} and {args.out / 'demo_nlg.png'}")
    finally:
        if driver is not None:
            driver.quit()
        demo.terminate()
        demo.wait(30)


if __name__ == "__main__":
    main()
