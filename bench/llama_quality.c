// Logit agreement of a llama.cpp model with a reference model on the same tokens: the counterpart
// of `qwenrt bench --quality N`, which compares a dtype with the f32 model. Same token sequence
// (xorshift64, salt 4, ids below min(vocab, 248000)), same statistics: mean and minimum cosine of
// the logits over all positions, and how often the most likely next token agrees.
//
//   llama_quality <reference.gguf> <candidate.gguf> [positions] [threads]
#include "llama.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static float *all_logits(const char *path, const llama_token *tokens, int n, int threads, int *vocab_out) {
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", path);
        exit(1);
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n + 16;
    cp.n_batch = n;
    cp.n_ubatch = n;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot create a context for %s\n", path);
        exit(1);
    }
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = tokens[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed for %s\n", path);
        exit(1);
    }
    float *out = malloc(sizeof(float) * (size_t)n * vocab);
    for (int i = 0; i < n; i++) {
        const float *l = llama_get_logits_ith(ctx, i);
        for (int v = 0; v < vocab; v++) out[(size_t)i * vocab + v] = l[v];
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    *vocab_out = vocab;
    return out;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s <reference.gguf> <candidate.gguf> [positions] [threads]\n", argv[0]);
        return 2;
    }
    int n = argc > 3 ? atoi(argv[3]) : 64;
    int threads = argc > 4 ? atoi(argv[4]) : 2;
    llama_backend_init();

    llama_token *tokens = malloc(sizeof(llama_token) * n);
    uint64_t s = 0x2545F4914F6CDD1Dull ^ 4;
    for (int i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        tokens[i] = (llama_token)(s % 248000);
    }
    int vocab_a, vocab_b;
    float *want = all_logits(argv[1], tokens, n, threads, &vocab_a);
    float *got = all_logits(argv[2], tokens, n, threads, &vocab_b);
    if (vocab_a != vocab_b || vocab_a < 248000) {
        fprintf(stderr, "vocabularies differ or are too small (%d, %d)\n", vocab_a, vocab_b);
        return 1;
    }
    double sum = 0, min = INFINITY;
    int same = 0;
    for (int i = 0; i < n; i++) {
        const float *a = want + (size_t)i * vocab_a, *b = got + (size_t)i * vocab_a;
        double ab = 0, aa = 0, bb = 0;
        for (int v = 0; v < vocab_a; v++) {
            ab += (double)a[v] * b[v];
            aa += (double)a[v] * a[v];
            bb += (double)b[v] * b[v];
        }
        double c = ab / sqrt(aa * bb);
        sum += c;
        if (c < min) min = c;
        same += argmax(a, vocab_a) == argmax(b, vocab_a);
    }
    printf("positions %d  mean cosine %.5f  min cosine %.5f  top-1 %.1f %%\n", n, sum / n, min, 100.0 * same / n);
    return 0;
}
