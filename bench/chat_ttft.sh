#!/usr/bin/env bash
# Time to first token of turn N+1 after a ~2,000-token conversation: qwenrt's saved session
# states versus prefilling the whole history again. Uses the full-size synthetic model
# (Qwen3.5-0.8B geometry, seeded random weights) written by `qwenrt synth`.
#
#   bench/chat_ttft.sh [HISTORY_TOKENS] [DTYPE]      (defaults: 2000 int8)
#
# Environment: QWENRT_SYNTH_DIR (where the model folder goes; default: the system temp dir),
# QWENRT_TOKENIZER_DIR (the generated tokenizer.json; default fixtures-gen/qwen3_5-tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."

HISTORY=${1:-2000}
DTYPE=${2:-int8}
MODEL=${QWENRT_SYNTH_DIR:-${TMPDIR:-/tmp}/qwenrt-chat-bench-0.8b}
TOKENIZER=${QWENRT_TOKENIZER_DIR:-fixtures-gen/qwen3_5-tokenizer}/tokenizer.json

cargo build --release --locked -p qwenrt-cli --bin qwenrt --example chat_ttft
if [ ! -f "$MODEL/config.json" ]; then
    target/release/qwenrt synth --out "$MODEL"
fi
if [ ! -f "$MODEL/tokenizer.json" ]; then
    [ -f "$TOKENIZER" ] || { echo "missing $TOKENIZER: run scripts/test once (it builds it)" >&2; exit 1; }
    cp "$TOKENIZER" "$MODEL/tokenizer.json"
fi
target/release/examples/chat_ttft "$MODEL" "$HISTORY" "$DTYPE"
