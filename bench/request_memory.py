#!/usr/bin/env python3
"""Peak memory of `qwenrt serve` on the largest requests its default limits accept.

    python3 bench/request_memory.py --bin target/release/qwenrt --model MODEL_DIR

Starts the server with its default limits and sends, one case at a time, on an idle server:

- `huge-text x4`: four concurrent chat requests whose text fills the body limit (16 MiB of
  JSON), far over the context: each must be refused (400) after reading about one context of
  tokens;
- `context-sized text`: one prompt just under `--ctx` tokens, answered with 1 token;
- `pictures at the media budget`: one request with two 8192x8192 PNG pictures (128 Mpx, the
  default `--max-media-mpx`), answered with 1 token (a model with a vision tower only).

For each: the resident memory (VmRSS) before, at its peak while the case runs (sampled every
20 ms), and 2 s after. Standard library only (the PNGs are written with zlib).
"""

import argparse
import base64
import json
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def png(width, height):
    """A grey RGB PNG, small on the wire (it compresses to almost nothing), big when decoded."""
    row = b"\x00" + b"\x80" * (3 * width)
    data = zlib.compress(row * height, 9)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def post(port, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1800) as response:
            return response.status, response.read()[:200]
    except urllib.error.HTTPError as e:
        return e.code, e.read()[:200]


def measure(pid, port, bodies):
    before = rss_mib(pid)
    peak, results = [before], []
    threads = [threading.Thread(target=lambda b=b: results.append(post(port, b))) for b in bodies]
    start = time.time()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(rss_mib(pid))
        time.sleep(0.02)
    took = time.time() - start
    time.sleep(2)
    return {"before": round(before), "peak": round(max(peak)), "after": round(rss_mib(pid)),
            "seconds": round(took, 1), "statuses": sorted(status for status, _ in results),
            "errors": sorted({body.decode("utf-8", "replace") for status, body in results if status != 200})}


def chat(content, max_tokens=1):
    return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                       "chat_template_kwargs": {"enable_thinking": False}}).encode()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="int8")
    p.add_argument("--ctx", type=int, default=40000,
                   help="--ctx of the server: the context-sized case fills it, and two pictures at the "
                        "media budget take 32,786 tokens")
    p.add_argument("--no-pictures", action="store_true",
                   help="skip the pictures (a full-size vision tower takes long on 2x16k patches)")
    args = p.parse_args()
    server = subprocess.Popen([args.bin, "serve", "--model", args.model, "--port", "0", "--dtype", args.dtype,
                               "--ctx", str(args.ctx)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(server.stdout.readline().strip().rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/props") as r:
            vision = json.load(r)["modalities"]["vision"]
        report = {"idle_mib": round(rss_mib(server.pid))}
        words = ("alpha beta gamma delta epsilon zeta eta theta " * ((15 << 20) // 48 + 1))[: 15 << 20]
        report["huge-text x4"] = measure(server.pid, port, [chat(words)] * 4)
        # About 1.2 tokens a word here: stay a little under the context.
        report["context-sized text"] = measure(server.pid, port, [chat(" ".join(["word"] * int(args.ctx * 0.8)))])
        if vision and not args.no_pictures:
            picture = "data:image/png;base64," + base64.b64encode(png(8192, 8192)).decode()
            parts = [{"type": "text", "text": "Describe."}] + [
                {"type": "image_url", "image_url": {"url": picture}} for _ in range(2)]
            report["pictures at the media budget"] = measure(server.pid, port, [chat(parts)])
        print(json.dumps(report, indent=2))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
