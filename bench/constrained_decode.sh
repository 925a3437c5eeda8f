#!/usr/bin/env bash
# Decode speed with a JSON Schema constraint against the same chat answer unconstrained, on the
# full-size random Qwen3.5-0.8B (written once by `qwenrt synth`, with the generated tokenizer), and
# the time the token masks take per token. Usage: bench/constrained_decode.sh [DTYPE] [TOKENS] [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
DTYPE=${1:-int8}
TOKENS=${2:-128}
REPS=${3:-5}
WORK=${WORK:-$PWD/target/compare}
MODEL=$WORK/qwen3.5-0.8b-synthetic
mkdir -p "$WORK"
cargo build --release -p qwenrt-cli --quiet
QWENRT=$PWD/target/release/qwenrt
if [ ! -f fixtures-gen/qwen3_5-tokenizer/tokenizer.json ]; then
    python3 scripts/build_tokenizer.py --family qwen3_5 --out fixtures-gen/qwen3_5-tokenizer
fi
[ -f "$MODEL/model.safetensors" ] || "$QWENRT" synth --out "$MODEL"
cp fixtures-gen/qwen3_5-tokenizer/tokenizer.json "$MODEL/"
lscpu | grep -E '^(Model name|Flags)' | sed 's/^/# /'
# In the first schema, strings the random model never closes keep the answer going for all TOKENS
# (cheap masks); the second is 40 or more records of numbers and booleans, so nearly every token
# is a structural one (the costliest masks).
for schema in bench/schemas/weather.json bench/schemas/numbers.json; do
    echo "# $schema"
    "$QWENRT" bench --model "$MODEL" --dtype "$DTYPE" -p 0 -n "$TOKENS" --reps "$REPS" --json-schema "$schema"
done
