#!/usr/bin/env bash
# How much each engine's reduced precision changes the logits, on identical weights: qwenrt's
# int8/int4 against its f32 model (`qwenrt bench --quality N`) and llama.cpp's Q8_0/Q4_0 against
# its BF16 file (bench/llama_quality.c, built here against llama.cpp's libraries). Both score the
# same N seeded token ids: mean and minimum logit cosine over the positions, top-1 agreement.
#
#   bench/compare_quality.sh [positions] [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
POSITIONS=${1:-64}
THREADS=${2:-$(nproc)}
WORK=${WORK:-$PWD/target/compare}
LLAMA_DIR=${LLAMA_DIR:-$PWD/target/llama.cpp}
MODEL=$WORK/qwen3.5-0.8b-synthetic
QWENRT=$PWD/target/release/qwenrt
BIN=$LLAMA_DIR/build/bin
WORK=$WORK LLAMA_DIR=$LLAMA_DIR bench/prepare_synthetic.sh

if [ ! -x "$BIN/llama-quality" ] || [ bench/llama_quality.c -nt "$BIN/llama-quality" ]; then
    B=$LLAMA_DIR/build
    cc -O2 bench/llama_quality.c -I"$LLAMA_DIR/src/include" -I"$LLAMA_DIR/src/ggml/include" \
        "$B/src/libllama.a" "$B/ggml/src/libggml.a" "$B/ggml/src/libggml-cpu.a" "$B/ggml/src/libggml-base.a" \
        -lstdc++ -fopenmp -lm -lpthread -o "$BIN/llama-quality"
fi

printf '| engine | weights | mean cosine | min cosine | top-1 |\n|---|---|---|---|---|\n'
declare -A GGUF=([int8]=Q8_0 [int4]=Q4_0)
for dtype in int8 int4; do
    q=${GGUF[$dtype]}
    "$BIN/llama-quality" "$WORK/model-bf16.gguf" "$WORK/model-$q.gguf" "$POSITIONS" "$THREADS" 2>/dev/null |
        awk -v q="$q" '{printf "| llama.cpp | %s vs BF16 | %s | %s | %s %% |\n", q, $5, $8, $10}'
    "$QWENRT" bench --model "$MODEL" --dtype "$dtype" --threads "$THREADS" -p 0 -n 0 --quality "$POSITIONS" --json |
        python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r["test"].startswith("quality"):
        d = r["details"]
        print("| qwenrt | %s vs f32 | %.5f | %.5f | %.1f %% |" % (r["dtype"], d["mean_cosine"], d["min_cosine"], 100 * d["top1_agreement"]))
'
done
