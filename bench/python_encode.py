#!/usr/bin/env python3
"""Python `qwenrt.Embedder.encode` against the `qwenrt embed` binary on the same texts.

Both embed the same texts in one batch with the same library call; the question is what the
binding costs. The binary's time is its run on the texts minus its run on one short text (what
loading costs), both measured in the same round; the engines alternate, and the medians of the
rounds are compared.

    python3 bench/python_encode.py --model <embedding folder> [--binary target/release/qwenrt]
"""

import argparse
import json
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import qwenrt

WORDS = (
    "the of and to in is was for on that with as by at from his it an were are which this be or "
    "has had not first one their its new after who they two her she been other when there all "
    "during into school time may years more most only over city some world would where later up "
    "such used many can state about national out known university united then made"
).split()


def texts(count: int, words: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


def run_binary(binary: str, model: str, dtype: str, threads: int, file: Path) -> float:
    start = time.perf_counter()
    out = subprocess.run(
        [binary, "embed", "--model", model, "--dtype", dtype, "--threads", str(threads), "--file", str(file), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--binary", default="target/release/qwenrt")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", type=int, default=32)
    p.add_argument("--words", type=int, default=120)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    batch = texts(args.texts, args.words)
    with tempfile.TemporaryDirectory() as tmp:
        many = Path(tmp) / "texts.jsonl"
        many.write_text("".join(json.dumps({"text": t}) + "\n" for t in batch))
        one = Path(tmp) / "one.jsonl"
        one.write_text(json.dumps({"text": "x"}) + "\n")

        embedder = qwenrt.Embedder(args.model, dtype=args.dtype, threads=args.threads)
        embedder.encode(batch[:2])  # warm the kernels' scratch
        cli, python = [], []
        for round_ in range(args.rounds):
            start = time.perf_counter()
            vectors = embedder.encode(batch, batch_size=len(batch))
            python.append(time.perf_counter() - start)
            full = run_binary(args.binary, args.model, args.dtype, args.threads, many)
            load = run_binary(args.binary, args.model, args.dtype, args.threads, one)
            cli.append(full - load)
            print(f"round {round_ + 1}: python {python[-1]:.2f} s, binary {full:.2f} - {load:.2f} = {cli[-1]:.2f} s")
        assert vectors.shape == (len(batch), embedder.dimension) and vectors.dtype == np.float32

    py_s, cli_s = statistics.median(python), statistics.median(cli)
    print(f"{args.texts} texts of {args.words} words, {args.dtype}, {args.threads} threads")
    print(f"median: python {py_s:.2f} s, binary {cli_s:.2f} s; python / binary time = {py_s / cli_s:.3f}")


if __name__ == "__main__":
    main()
