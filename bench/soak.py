#!/usr/bin/env python3
"""Soak test of `qwenrt serve`: hostile and ordinary traffic for a given time, then a verdict.

    python3 bench/soak.py --bin target/release/qwenrt --model MODEL_DIR [--minutes 10]

Starts the server itself (`--parallel 2 --queue 4` by default) and runs more clients than it
has places for (`--clients`, default 16), each looping over a random mix of:

- greedy chat requests, streamed or not, whose answers must equal the same request answered
  alone before the soak started (batching, prompt reuse and cancellations must not change them);
- sampled requests, and completions;
- invalid bodies (malformed JSON, wrong types, out-of-range values, a broken picture): 4xx;
- huge requests: a body over `--max-body-mib` (413) and a prompt over `--ctx` tokens (400);
- streams cancelled after their first chunks (the client closes the socket);
- slow clients sending their body in pieces, within the read timeout;
- half-open connections: part of a request head, then silence (the server must close them
  after `--read-timeout`).

A refusal because the server is full (503 with code `queue_full`) is the designed answer to
this much concurrency and is counted, not failed. Every other 5xx, a dropped connection on a
valid request, a crash, a wrong greedy answer, `/health` slower than `--health-limit` seconds,
or a server that does not stop cleanly on SIGTERM fails the run. Resident memory is sampled
throughout and reported as start, peak and end.

Standard library only.
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

PROMPTS = [
    "Name three colours.",
    "What is two plus two?",
    "Write one sentence about the sea.",
    "Translate 'good morning' into French.",
    "List the first five prime numbers.",
    "Say hello in a friendly way.",
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, help="the qwenrt binary")
    p.add_argument("--model", required=True, help="chat model folder")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--queue", type=int, default=4)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--max-body-mib", type=int, default=4)
    p.add_argument("--read-timeout", type=float, default=5.0)
    p.add_argument("--dtype", default="int8")
    p.add_argument("--max-tokens", type=int, default=12, help="answer length of greedy requests")
    p.add_argument("--health-limit", type=float, default=2.0, help="slowest /health allowed, seconds")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class Server:
    def __init__(self, args):
        cmd = [
            args.bin, "serve", "--model", args.model, "--port", "0",
            "--parallel", str(args.parallel), "--queue", str(args.queue), "--ctx", str(args.ctx),
            "--max-body-mib", str(args.max_body_mib), "--read-timeout", str(args.read_timeout),
            "--dtype", args.dtype,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on http://"):
            raise SystemExit(f"the server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        host, port = line.strip().rsplit("/", 1)[-1].split(":")
        self.host, self.port = host, int(port)
        self.log_lines = Counter()
        threading.Thread(target=self._drain_log, daemon=True).start()

    def _drain_log(self):
        for line in self.proc.stderr:
            parts = line.split()
            # "POST /v1/chat/completions 200 ..." request lines, by status.
            if len(parts) > 2 and parts[0] in ("GET", "POST"):
                self.log_lines[parts[2]] += 1

    def rss_mib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except FileNotFoundError:
            return None
        return None

    def alive(self):
        return self.proc.poll() is None


class Failures:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, what):
        with self.lock:
            if len(self.items) < 50:
                self.items.append(what)
            print(f"FAIL: {what}", file=sys.stderr, flush=True)


def request(server, method, path, body=None, timeout=300, headers=None):
    """Status, body bytes. Raises on a connection error."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def chat_body(prompt, max_tokens, stream=False, temperature=0.0):
    return {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": stream,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def streamed_text(raw):
    """The content and reasoning of an SSE answer, and whether it ended with [DONE]."""
    text, done, error = [], False, None
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            continue
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {})
            text.append(delta.get("reasoning_content") or "")
            text.append(delta.get("content") or "")
    return "".join(text), done, error


def answer_text(raw):
    message = json.loads(raw)["choices"][0]["message"]
    return (message.get("reasoning_content") or "") + (message.get("content") or "")


class Soak:
    def __init__(self, args, server):
        self.args, self.server = args, server
        self.failures = Failures()
        self.counts = Counter()
        self.counts_lock = threading.Lock()
        self.reference = {}
        self.stop = threading.Event()

    def count(self, key):
        with self.counts_lock:
            self.counts[key] += 1

    def answered(self, kind, status, raw, expect):
        """Counts an answer; fails it unless its status is `expect` (a set) or a busy 503."""
        if status == 503 and b"queue_full" in raw:
            self.count(f"{kind}: 503 busy")
            return False
        self.count(f"{kind}: {status}")
        if status not in expect:
            self.failures.add(f"{kind}: status {status} (wanted {sorted(expect)}): {raw[:300]!r}")
            return False
        return True

    # ---- the kinds of request ----

    def greedy(self, rng):
        prompt = rng.choice(PROMPTS)
        stream = rng.random() < 0.5
        status, raw = request(self.server, "POST", "/v1/chat/completions",
                              chat_body(prompt, self.args.max_tokens, stream))
        if not self.answered("greedy", status, raw, {200}):
            return
        if stream:
            text, done, error = streamed_text(raw)
            if error or not done:
                self.failures.add(f"greedy stream ended badly: {error or 'no [DONE]'}")
                return
        else:
            text = answer_text(raw)
        if text != self.reference[prompt]:
            self.failures.add(f"greedy answer differs from alone for {prompt!r}: {text!r} vs {self.reference[prompt]!r}")

    def sampled(self, rng):
        if rng.random() < 0.5:
            body = chat_body(rng.choice(PROMPTS), rng.randint(1, 24), temperature=0.9)
            body.update({"top_p": 0.9, "top_k": 40, "seed": rng.randint(0, 1000)})
            path = "/v1/chat/completions"
        else:
            body = {"prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(1, 16), "logprobs": 2}
            path = "/v1/completions"
        status, raw = request(self.server, "POST", path, body)
        self.answered("sampled", status, raw, {200})

    def invalid(self, rng):
        bodies = [
            b"{not json",
            b"",
            json.dumps({"messages": "hello"}).encode(),
            json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(),
            json.dumps({"messages": [{"role": "user", "content": "x"}], "top_p": 7}).encode(),
            json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(),
            json.dumps({"messages": []}).encode(),
            json.dumps({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAAAAAA"}}]}]}).encode(),
            json.dumps({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 1}}).encode(),
            json.dumps({"messages": [{"role": "user", "content": "x"}],
                        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}).encode(),
        ]
        status, raw = request(self.server, "POST", "/v1/chat/completions", rng.choice(bodies))
        self.answered("invalid", status, raw, {400, 404, 413, 422})

    def huge(self, rng):
        if rng.random() < 0.5:
            # Over the body limit: refused from its Content-Length (the connection may close
            # before all of it is sent, which is the point).
            size = (self.args.max_body_mib << 20) + 1024
            body = b'{"messages": [{"role": "user", "content": "' + b"a" * size + b'"}]}'
            try:
                status, raw = request(self.server, "POST", "/v1/chat/completions", body)
            except (ConnectionError, socket.timeout, http.client.HTTPException):
                self.count("huge body: closed early")
                return
            self.answered("huge body", status, raw, {413})
        else:
            # Under the body limit, over the context.
            text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(self.args.ctx * 2))
            status, raw = request(self.server, "POST", "/v1/chat/completions", chat_body(text, 4))
            self.answered("over context", status, raw, {400})

    def cancelled(self, rng):
        body = json.dumps(chat_body(rng.choice(PROMPTS), 200, stream=True, temperature=0.7)).encode()
        sock = socket.create_connection((self.server.host, self.server.port), timeout=60)
        try:
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            sock.sendall(head + body)
            got = b""
            while got.count(b"data: ") < rng.randint(1, 4) and b"\r\n\r\n0\r\n" not in got:
                piece = sock.recv(4096)
                if not piece:
                    break
                got += piece
            self.count("cancelled stream")
        finally:
            sock.close()

    def slow(self, rng):
        body = json.dumps(chat_body(rng.choice(PROMPTS), 4, temperature=0.5)).encode()
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=120)
        try:
            conn.putrequest("POST", "/v1/chat/completions")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            pieces = 4
            step = len(body) // pieces + 1
            for i in range(0, len(body), step):
                conn.send(body[i:i + step])
                time.sleep(self.args.read_timeout / (pieces * 3))
            response = conn.getresponse()
            self.answered("slow client", response.status, response.read(), {200})
        finally:
            conn.close()

    def half_open(self, rng):
        sock = socket.create_connection((self.server.host, self.server.port), timeout=self.args.read_timeout * 4)
        try:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
            start = time.time()
            try:
                closed = sock.recv(4096) is not None
            except socket.timeout:
                closed = False
            waited = time.time() - start
            if not closed or waited > self.args.read_timeout * 3:
                self.failures.add(f"a half-open connection stayed open {waited:.1f} s")
            else:
                self.count("half-open: closed by the server")
        finally:
            sock.close()

    # ---- the run ----

    def client(self, index):
        rng = random.Random(self.args.seed * 1000 + index)
        kinds = [(self.greedy, 30), (self.sampled, 15), (self.invalid, 15), (self.huge, 6),
                 (self.cancelled, 12), (self.slow, 8), (self.half_open, 4)]
        functions, weights = zip(*kinds)
        while not self.stop.is_set():
            kind = rng.choices(functions, weights)[0]
            try:
                kind(rng)
            except (ConnectionError, socket.timeout, http.client.HTTPException, OSError) as e:
                if kind in (self.cancelled, self.half_open):
                    continue
                self.failures.add(f"{kind.__name__}: connection failed: {e!r}")
                if not self.server.alive():
                    self.stop.set()

    def watch(self, samples, health):
        while not self.stop.is_set():
            rss = self.server.rss_mib()
            if rss is not None:
                samples.append(rss)
            start = time.time()
            try:
                status, _ = request(self.server, "GET", "/health", timeout=30)
                took = time.time() - start
                health.append(took)
                if status != 200 or took > self.args.health_limit:
                    self.failures.add(f"/health answered {status} in {took:.2f} s")
            except OSError as e:
                self.failures.add(f"/health failed: {e!r}")
            if not self.server.alive():
                self.failures.add(f"the server exited with {self.server.proc.returncode}")
                self.stop.set()
            time.sleep(0.25)


def main():
    args = parse_args()
    server = Server(args)
    soak = Soak(args, server)
    try:
        # The references: each greedy request answered alone, on an idle server.
        for prompt in PROMPTS:
            status, raw = request(server, "POST", "/v1/chat/completions", chat_body(prompt, args.max_tokens))
            if status != 200:
                raise SystemExit(f"reference request failed: {status} {raw[:300]!r}")
            soak.reference[prompt] = answer_text(raw)
        rss_start = server.rss_mib()
        samples, health = [rss_start], []
        print(f"soak: {args.minutes} min, {args.clients} clients against --parallel {args.parallel} "
              f"--queue {args.queue}; RSS at start {rss_start:.0f} MiB", flush=True)
        threads = [threading.Thread(target=soak.watch, args=(samples, health))]
        threads += [threading.Thread(target=soak.client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        deadline = time.time() + args.minutes * 60
        while time.time() < deadline and not soak.stop.is_set():
            time.sleep(1)
        soak.stop.set()
        for t in threads:
            t.join(timeout=600)
        time.sleep(1)
        rss_end = server.rss_mib()
        # Still answering as it did alone.
        for prompt in PROMPTS:
            status, raw = request(server, "POST", "/v1/chat/completions", chat_body(prompt, args.max_tokens))
            if status != 200 or answer_text(raw) != soak.reference[prompt]:
                soak.failures.add(f"after the soak, {prompt!r} answered {status} differently")
    finally:
        if server.alive():
            server.proc.send_signal(signal.SIGTERM)
            try:
                code = server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                code = "killed after 30 s"
            if code != 0:
                soak.failures.add(f"the server exited with {code} on SIGTERM")

    health.sort()
    total = sum(soak.counts.values())
    report = {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": total,
        "by_kind_and_status": dict(sorted(soak.counts.items())),
        "server_log_statuses": dict(sorted(server.log_lines.items())),
        "rss_mib": {"start": round(rss_start), "peak": round(max(samples)), "end": round(rss_end or 0)},
        "health_seconds": {"median": round(health[len(health) // 2], 4) if health else None,
                           "max": round(health[-1], 4) if health else None, "checks": len(health)},
        "failures": soak.failures.items,
    }
    print(json.dumps(report, indent=2))
    if soak.failures.items:
        print(f"FAILED: {len(soak.failures.items)} failure(s)", file=sys.stderr)
        sys.exit(1)
    print("passed: no 5xx but busy 503s, no crash, greedy answers equal to alone, /health fast")


if __name__ == "__main__":
    main()
