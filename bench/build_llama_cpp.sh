#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-quantize, llama-embedding and llama-cli from the
# llama.cpp sources vendored in the PyPI sdist of llama-cpp-python (which supports `qwen35`),
# and prepares its GGUF converter. Everything goes to $LLAMA_DIR (default: target/llama.cpp).
# Takes ~17 minutes on 2 cores; run once per machine. Built for AVX2+FMA+F16C, the instruction set
# qwenrt's kernels use (and what -march=native gave on a host whose VM hid some AVX-512 parts:
# the native build died with an illegal instruction).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_DIR=${LLAMA_DIR:-$PWD/target/llama.cpp}
VERSION=0.3.36
JOBS=${JOBS:-$(nproc)}

if [ -x "$LLAMA_DIR/build/bin/llama-bench" ]; then
    echo "llama.cpp already built in $LLAMA_DIR"
    exit 0
fi
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake; }
mkdir -p "$LLAMA_DIR"
tmp=$(mktemp -d)
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$tmp"
tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp"
rm -rf "$LLAMA_DIR/src"
mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$LLAMA_DIR/src"
rm -rf "$tmp"

cmake -S "$LLAMA_DIR/src" -B "$LLAMA_DIR/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DBUILD_SHARED_LIBS=OFF > "$LLAMA_DIR/cmake.log"
cmake --build "$LLAMA_DIR/build" -j "$JOBS" --target llama-bench llama-quantize llama-embedding llama-cli llama-mtmd-cli \
    > "$LLAMA_DIR/build.log"
echo "built: $LLAMA_DIR/build/bin"
