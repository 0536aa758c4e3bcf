#!/usr/bin/env bash
# The generation peers' environment for `python -m benchmarks.generation_frontier` (not needed by the tests):
# llama.cpp through llama-cpp-python, built from its sdist (4-9 minutes on 2 cores), and llama.cpp's own
# convert_hf_to_gguf.py with its gguf-py from the same sdist, in a venv of their own at .peers/llama.
# The native build (-DGGML_NATIVE=ON, the default) segfaults on quantised types on AMX CPUs: the flags below
# pick the x86 paths explicitly. Usage: bash scripts/setup_peers.sh [PEERS_DIR]
set -euo pipefail
PEERS="${1:-.peers}"
VERSION=0.3.36
python3 -m venv "$PEERS/llama"
PIP="$PEERS/llama/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$PEERS/sdist"
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 \
  "$PIP" install -q "$PEERS/sdist/llama_cpp_python-$VERSION.tar.gz"
# convert_hf_to_gguf.py and gguf-py from the same sdist (the converter matches the library's GGUF reader)
tar -xzf "$PEERS/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$PEERS/sdist"
SRC="$PEERS/sdist/llama_cpp_python-$VERSION/vendor/llama.cpp"
"$PIP" install -q "$SRC/gguf-py" "numpy<3" sentencepiece "transformers>=5.25,<6" "torch==2.13.0"
echo "peers ready: $PEERS/llama/bin/python (converter: $SRC/convert_hf_to_gguf.py)"
