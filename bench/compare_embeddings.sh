#!/usr/bin/env bash
# Embedding throughput side by side on identical weights: a synthetic Qwen3-Embedding-0.6B (random
# weights, real geometry, sentence-transformers layout) written by `qwenrt synth`, run by
#   * qwenrt (`qwenrt bench` on the folder: texts batched as `Embedder` batches them),
#   * llama.cpp (`llama-bench -embd 1` on a GGUF from its own converter, Q8_0 and BF16),
#   * sentence-transformers on torch CPU (float32 and bfloat16 weights),
# with the same thread count, alternating, for texts of 512 and 4,096 tokens. Prints tokens/s.
#
#   bench/compare_embeddings.sh [threads] [reps]
#
# Needs what bench/compare_llama_cpp.sh needs, plus sentence-transformers (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
REPS=${2:-2}
WORK=${WORK:-$PWD/target/compare}
LLAMA_DIR=${LLAMA_DIR:-$PWD/target/llama.cpp}
MODEL=$WORK/qwen3-embedding-0.6b
mkdir -p "$WORK"

bench/build_llama_cpp.sh
cargo build --release -p qwenrt-cli --quiet
QWENRT=$PWD/target/release/qwenrt
BIN=$LLAMA_DIR/build/bin

if [ ! -f fixtures-gen/qwen3-tokenizer/tokenizer.json ]; then
    python3 scripts/build_tokenizer.py --family qwen3 --append-eos --out fixtures-gen/qwen3-tokenizer
fi
if [ ! -f "$MODEL/model.safetensors" ]; then
    "$QWENRT" synth --preset qwen3-embedding-0.6b --out "$MODEL"
fi
cp fixtures-gen/qwen3-tokenizer/tokenizer.json fixtures-gen/qwen3-tokenizer/tokenizer_config.json "$MODEL/"

# The converter tries sentencepiece before the GPT-2 style vocabulary and needs the module to fail cleanly.
python3 -c "import torch, numpy, safetensors, transformers, sentence_transformers, sentencepiece" 2>/dev/null ||
    python3 -m pip install --quiet torch numpy safetensors transformers sentence-transformers sentencepiece
export PYTHONPATH="$LLAMA_DIR/src/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -f "$WORK/embed-bf16.gguf" ]; then
    python3 "$LLAMA_DIR/src/convert_hf_to_gguf.py" "$MODEL" --outtype bf16 --outfile "$WORK/embed-bf16.gguf"
fi
[ -f "$WORK/embed-Q8_0.gguf" ] || "$BIN/llama-quantize" "$WORK/embed-bf16.gguf" "$WORK/embed-Q8_0.gguf" Q8_0 > /dev/null

# sentence-transformers: texts of N random tokens, batched like qwenrt (about 4,096 tokens per batch).
st_rate() {
    python3 - "$MODEL" "$1" "$2" "$THREADS" <<'EOF'
import sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, length, dtype, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
st = SentenceTransformer(model_dir, device="cpu", model_kwargs={"dtype": getattr(torch, dtype)})
st.max_seq_length = length
n = max(1, 4096 // length)
g = torch.Generator().manual_seed(0)
ids = torch.randint(1000, 150000, (n, length - 1), generator=g)
texts = st.tokenizer.batch_decode(ids)
with torch.inference_mode():
    st.encode(texts[:1], batch_size=n)  # warm-up
    t0 = time.perf_counter()
    st.encode(texts, batch_size=n)
    elapsed = time.perf_counter() - t0
tokens = sum(len(st.tokenizer(t)["input_ids"][:length]) for t in texts)
print(f"{tokens / elapsed:.2f}")
EOF
}

med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '| text tokens | qwenrt int8 | qwenrt bf16 | llama.cpp Q8_0 | llama.cpp BF16 | s-t f32 | s-t bf16 | qwenrt int8 / llama.cpp Q8_0 | qwenrt int8 / best s-t |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for len in 512 4096; do
    q8=(); qb=(); l8=(); lb=(); sf=(); sb=()
    for _ in $(seq "$REPS"); do
        for dtype in int8 bf16; do
            r=$("$QWENRT" bench --model "$MODEL" --dtype "$dtype" --threads "$THREADS" -p "$len" --reps 1 --json |
                python3 -c 'import json,sys; print([json.loads(l)["tokens_per_second"] for l in sys.stdin][0])')
            if [ "$dtype" = int8 ]; then q8+=("$r"); else qb+=("$r"); fi
        done
        for q in Q8_0 bf16; do
            r=$("$BIN/llama-bench" -m "$WORK/embed-$q.gguf" -t "$THREADS" -p "$len" -n 0 -b 4096 -ub 4096 -embd 1 -r 1 -o json |
                python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])')
            if [ "$q" = Q8_0 ]; then l8+=("$r"); else lb+=("$r"); fi
        done
        sf+=("$(st_rate "$len" float32)")
        sb+=("$(st_rate "$len" bfloat16)")
    done
    a=$(med "${q8[@]}"); b=$(med "${qb[@]}"); c=$(med "${l8[@]}"); d=$(med "${lb[@]}"); e=$(med "${sf[@]}"); f=$(med "${sb[@]}")
    python3 - "$len" "$a" "$b" "$c" "$d" "$e" "$f" <<'EOF'
import sys
n, a, b, c, d, e, f = sys.argv[1], *map(float, sys.argv[2:])
print(f"| {n} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} | {e:.1f} | {f:.1f} | {a / c:.2f} | {a / max(e, f):.2f} |")
EOF
done
