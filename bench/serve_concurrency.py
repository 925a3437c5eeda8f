#!/usr/bin/env python3
"""Aggregate decode speed of `qwenrt serve` with N concurrent streams vs one stream.

Starts the server on a model folder (default: the synthetic Qwen3.5-0.8B that
bench/compare_llama_cpp.sh writes), then measures, with the official `openai` client:

* one streaming request alone: time to first token and decode tokens/s;
* N streaming requests at once: each one's time to first token, and the aggregate decode
  tokens/s (all tokens after each stream's first, over the span from the first first-token to
  the last token);
* resident memory of the server before and after the N sessions exist (memory per session).

End-of-turn tokens are banned with logit_bias so every request decodes exactly --tokens tokens.

    python3 bench/serve_concurrency.py [--model DIR] [--streams 4] [--tokens 64] [--dtype int8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def stream(client: OpenAI, prompt: str, tokens: int, out: dict) -> None:
    start = time.perf_counter()
    times = []
    chunks = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        logit_bias={"248046": -100, "248044": -100},
    )
    completion = 0
    for chunk in chunks:
        if chunk.usage is not None:
            completion = chunk.usage.completion_tokens
        if chunk.choices and (chunk.choices[0].delta.content or getattr(chunk.choices[0].delta, "reasoning_content", None)):
            times.append(time.perf_counter())
    out.update(start=start, first=times[0] if times else None, last=times[-1] if times else None, tokens=completion)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "target/compare/qwen3.5-0.8b-synthetic")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/qwenrt")
    args = ap.parse_args()

    binary = args.binary
    server = subprocess.Popen(
        [str(binary), "serve", "--model", str(args.model), "--dtype", args.dtype, "--port", "0",
         "--parallel", str(args.streams), "--threads", str(args.threads)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        url = server.stdout.readline().strip().split()[-1]
        client = OpenAI(base_url=f"{url}/v1", api_key="none")
        prompts = [f"Question number {i}: tell me a long story about the number {i}." for i in range(args.streams)]
        # Warm-up (page in the weights).
        stream(client, "hello", 4, {})
        rss_before = rss_bytes(server.pid)

        alone: dict = {}
        stream(client, prompts[0] + " (alone)", args.tokens, alone)
        single_rate = (alone["tokens"] - 1) / (alone["last"] - alone["first"])

        results = [dict() for _ in prompts]
        threads = [threading.Thread(target=stream, args=(client, p, args.tokens, r)) for p, r in zip(prompts, results)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss_after = rss_bytes(server.pid)
        first = min(r["first"] for r in results)
        last = max(r["last"] for r in results)
        decoded = sum(r["tokens"] - 1 for r in results)
        aggregate = decoded / (last - first)
        ttft = sorted(r["first"] - r["start"] for r in results)

        print(f"model {args.model.name}, {args.dtype}, {args.threads} threads, {args.tokens} tokens per stream")
        print(f"| streams | decode t/s (aggregate) | ratio to 1 stream | TTFT s (median / max) |")
        print(f"|---|---|---|---|")
        print(f"| 1 | {single_rate:.2f} | 1.00 | {alone['first'] - alone['start']:.2f} |")
        print(f"| {args.streams} | {aggregate:.2f} | {aggregate / single_rate:.2f} | {ttft[len(ttft) // 2]:.2f} / {ttft[-1]:.2f} |")
        print(f"server RSS {rss_before / 2**30:.2f} GiB with one session, {rss_after / 2**30:.2f} GiB with "
              f"{args.streams}: {(rss_after - rss_before) / max(1, args.streams - 1) / 2**20:.1f} MiB per extra session")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
