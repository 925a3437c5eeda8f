#!/usr/bin/env bash
# Side by side with llama.cpp on identical weights: a synthetic Qwen3.5-0.8B (random weights,
# real geometry) written by `qwenrt synth`, converted to GGUF by llama.cpp's own converter
# (BF16, then Q8_0 and Q4_0 with llama-quantize). Both engines run the same prompt/decode lengths
# with the same thread count, alternating, and the script prints the ratios.
#
#   bench/compare_llama_cpp.sh [threads] [prompt] [gen] [reps]
#
# bench/prepare_synthetic.sh (run here) builds llama.cpp and qwenrt and writes the model files.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
PROMPT=${2:-512}
GEN=${3:-128}
REPS=${4:-3}
WORK=${WORK:-$PWD/target/compare}
LLAMA_DIR=${LLAMA_DIR:-$PWD/target/llama.cpp}
MODEL=$WORK/qwen3.5-0.8b-synthetic
QWENRT=$PWD/target/release/qwenrt
BIN=$LLAMA_DIR/build/bin
WORK=$WORK LLAMA_DIR=$LLAMA_DIR bench/prepare_synthetic.sh

declare -A GGUF=([bf16]=bf16 [int8]=Q8_0 [int4]=Q4_0)
printf '| weights | engine | pp%s t/s | tg%s t/s |\n|---|---|---|---|\n' "$PROMPT" "$GEN"
for dtype in int8 int4 bf16; do
    q=${GGUF[$dtype]}
    # Alternate the engines so drifting machine load hits both alike; report the best median.
    ll_pp=(); ll_tg=(); qw_pp=(); qw_tg=()
    for _ in $(seq "$REPS"); do
        out=$("$BIN/llama-bench" -m "$WORK/model-$q.gguf" -t "$THREADS" -p "$PROMPT" -n "$GEN" -r 1 -o json)
        ll_pp+=("$(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print([x["avg_ts"] for x in r if x["n_prompt"]>0][0])')")
        ll_tg+=("$(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print([x["avg_ts"] for x in r if x["n_gen"]>0][0])')")
        out=$("$QWENRT" bench --model "$MODEL" --dtype "$dtype" --threads "$THREADS" -p "$PROMPT" -n "$GEN" --reps 1 --json)
        qw_pp+=("$(echo "$out" | python3 -c 'import json,sys; print([json.loads(l)["tokens_per_second"] for l in sys.stdin if json.loads(l)["test"].startswith("pp")][0])')")
        qw_tg+=("$(echo "$out" | python3 -c 'import json,sys; print([json.loads(l)["tokens_per_second"] for l in sys.stdin if json.loads(l)["test"].startswith("tg")][0])')")
    done
    med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    lp=$(med "${ll_pp[@]}"); lt=$(med "${ll_tg[@]}"); qp=$(med "${qw_pp[@]}"); qt=$(med "${qw_tg[@]}")
    printf '| %s / %s | llama.cpp | %.1f | %.1f |\n' "$dtype" "$q" "$lp" "$lt"
    ratio() { python3 -c "print($1 / $2)"; }
    printf '| %s / %s | qwenrt | %.1f (%.2fx) | %.1f (%.2fx) |\n' "$dtype" "$q" "$qp" "$(ratio "$qp" "$lp")" "$qt" "$(ratio "$qt" "$lt")"
done
