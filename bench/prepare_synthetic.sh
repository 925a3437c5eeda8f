#!/usr/bin/env bash
# Prepares what the side-by-side scripts compare: llama.cpp (bench/build_llama_cpp.sh), the
# release qwenrt binary, a synthetic Qwen3.5-0.8B folder (random weights, real geometry, written
# by `qwenrt synth`) with the generated tokenizer, and the same weights as GGUF files converted by
# llama.cpp's own converter (BF16, then Q8_0 and Q4_0 with llama-quantize).
# Everything goes to $WORK (default: target/compare); existing files are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$PWD/target/compare}
LLAMA_DIR=${LLAMA_DIR:-$PWD/target/llama.cpp}
MODEL=$WORK/qwen3.5-0.8b-synthetic
mkdir -p "$WORK"

bench/build_llama_cpp.sh
cargo build --release -p qwenrt-cli --quiet
QWENRT=$PWD/target/release/qwenrt

if [ ! -f fixtures-gen/qwen3_5-tokenizer/tokenizer.json ]; then
    python3 scripts/build_tokenizer.py --family qwen3_5 --out fixtures-gen/qwen3_5-tokenizer
fi
if [ ! -f "$MODEL/model.safetensors" ]; then
    "$QWENRT" synth --out "$MODEL"
fi
cp fixtures-gen/qwen3_5-tokenizer/tokenizer.json "$MODEL/"

python3 -c "import torch, numpy, safetensors, transformers" 2>/dev/null ||
    python3 -m pip install --quiet torch numpy safetensors transformers
export PYTHONPATH="$LLAMA_DIR/src/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
BIN=$LLAMA_DIR/build/bin
if [ ! -f "$WORK/model-bf16.gguf" ]; then
    python3 "$LLAMA_DIR/src/convert_hf_to_gguf.py" "$MODEL" --outtype bf16 --outfile "$WORK/model-bf16.gguf"
fi
for q in Q8_0 Q4_0; do
    [ -f "$WORK/model-$q.gguf" ] || "$BIN/llama-quantize" "$WORK/model-bf16.gguf" "$WORK/model-$q.gguf" "$q" > /dev/null
done
