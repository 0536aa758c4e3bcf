#!/usr/bin/env bash
# README command 2: install, then run the whole test suite (unit tests on tiny models, and the slow tests
# on the packaged MiniLM / SmolLM2 with ../shared/data, which skip with a reason when that folder is absent).
# CI runs it without arguments: every test, the integration ones included (`pytest -m "not integration"` is the
# fast loop: CONTRIBUTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The demo's browser test drives Debian's headless Chromium; install it once, quietly (it skips without).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
            >/dev/null 2>&1 || echo "test: apt-get could not install chromium chromium-driver; the browser test will skip"
    else
        echo "test: no apt-get here; the browser test skips without /usr/bin/chromium and /usr/bin/chromedriver"
    fi
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
