"""The Python package against the CLI (bit for bit), sentence-transformers' recorded vectors,
and itself: streaming equals sending, cancellation, Ctrl-C, threads sharing one model.

Needs the tokenizer.json files that scripts/test generates and the `qwenrt` binary that
`cargo test` builds (QWENRT_BIN overrides its path); a missing one fails, it never skips.
"""

import _thread
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import qwenrt

ROOT = Path(__file__).resolve().parents[3]


def need(path: Path, how: str) -> Path:
    assert path.exists(), f"{path} is missing: {how}"
    return path


def qwenrt_bin() -> str:
    default = ROOT / "target" / "debug" / "qwenrt"
    return str(need(Path(os.environ.get("QWENRT_BIN", default)), "build it with `cargo build -p qwenrt-cli`"))


def model_folder(tmp_path_factory, fixture: str, tokenizer: str) -> Path:
    tok = need(ROOT / "fixtures-gen" / tokenizer / "tokenizer.json", "run scripts/test once (it builds the tokenizers)")
    dst = tmp_path_factory.mktemp(fixture) / fixture
    shutil.copytree(ROOT / "fixtures" / "models" / fixture, dst)
    shutil.copy(tok, dst / "tokenizer.json")
    return dst


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory) -> Path:
    return model_folder(tmp_path_factory, "tiny-vl", "qwen3_5-tokenizer")


@pytest.fixture(scope="session")
def embed_dir(tmp_path_factory) -> Path:
    return model_folder(tmp_path_factory, "tiny-embed", "qwen3-tokenizer")


@pytest.fixture(scope="session")
def lm(lm_dir) -> qwenrt.LanguageModel:
    return qwenrt.LanguageModel(lm_dir, dtype="f32")


@pytest.fixture(scope="session")
def embedder(embed_dir) -> qwenrt.Embedder:
    return qwenrt.Embedder(embed_dir, dtype="f32")


def cli_json(*args: str) -> dict:
    out = subprocess.run([qwenrt_bin(), *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# Embeddings


@pytest.mark.parametrize("dtype", ["f32", "int8"])
def test_embeddings_equal_the_cli_bit_for_bit(embed_dir, dtype):
    texts = ["What is the capital of France?", "Paris is the capital of France.", "", "日本語のテキスト 🙂"]
    embedder = qwenrt.Embedder(embed_dir, dtype=dtype)
    for flags, kwargs in [([], {}), (["--query"], {"prompt_name": "query"}), (["--dims", "8"], {"dimensions": 8})]:
        want = np.array(cli_json("embed", "--model", str(embed_dir), "--dtype", dtype, "--json", *flags, *texts)["embeddings"], dtype=np.float32)
        # The CLI embeds its texts as one batch; so does encode with the default batch_size.
        got = embedder.encode(texts, **kwargs)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), flags
        # Smaller batches give the same vectors up to the order of the sums in a product.
        assert np.allclose(embedder.encode(texts, batch_size=3, **kwargs), want, atol=2e-6)


def test_embeddings_match_sentence_transformers(embedder):
    expected = json.loads((ROOT / "fixtures/models/tiny-embed/expected.json").read_text())
    for case in expected["texts"]:
        if case["kind"] == "query":
            got = embedder.encode(case["text"], prompt_name="query")
        elif case["kind"] == "instruct":
            got = embedder.encode(case["text"], instruction=case["instruct"])
        else:
            got = embedder.encode(case["text"])
        want = np.array(case["embedding"], dtype=np.float64)
        assert got.shape == (embedder.dimension,)
        cosine = float(got.astype(np.float64) @ want / np.linalg.norm(want))
        assert cosine >= 0.99999, (case["name"], cosine)
    first3 = [c for c in expected["texts"][:3]]
    for case, want in zip(first3, expected["matryoshka_8"]):
        kwargs = {"prompt_name": "query"} if case["kind"] == "query" else (
            {"instruction": case["instruct"]} if case["kind"] == "instruct" else {})
        got = embedder.encode([case["text"]], dimensions=8, **kwargs)[0]
        assert np.allclose(got, want, atol=1e-5), case["name"]


def test_embedding_errors_are_exceptions(embedder):
    with pytest.raises(ValueError, match="prompt_name"):
        embedder.encode("x", prompt_name="passage")
    with pytest.raises(qwenrt.QwenrtError, match="dimensions must be between 1 and"):
        embedder.encode("x", dimensions=10_000)
    with pytest.raises(qwenrt.QwenrtError, match="no such model folder, and not a hub id"):
        qwenrt.Embedder("./no/such/folder")


# Chat


def test_send_equals_the_cli_and_stream_equals_send(lm_dir, lm):
    cli = cli_json("run", "--model", str(lm_dir), "--dtype", "f32", "--json", "--temperature", "0",
                   "--max-tokens", "24", "--no-think", "Hello there")
    reply = qwenrt.ChatSession(lm).send("Hello there", temperature=0.0, max_tokens=24, enable_thinking=False)
    assert reply.content == cli["text"]
    assert reply.completion_tokens == 24 and reply.finish_reason == "length"

    session = lm.chat()
    events = list(session.stream("Hello there", temperature=0.0, max_tokens=24, enable_thinking=False))
    assert [e.kind for e in events][-1] == "done" and all(e.kind != "done" for e in events[:-1])
    assert "".join(e.text for e in events if e.kind == "content") == reply.content
    assert events[-1].reply.content == reply.content
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


def test_a_conversation_reuses_its_state(lm):
    session = lm.chat(system="Be terse.")
    session.send("One", temperature=0.0, max_tokens=4, enable_thinking=False)
    second = session.send("Two", temperature=0.0, max_tokens=4, enable_thinking=False)
    assert second.cached_prompt_tokens > 0
    session.reset()
    assert session.messages == []


def test_cancel_from_another_thread(lm):
    session = lm.chat()
    timer = threading.Timer(0.3, session.cancel)
    timer.start()
    reply = session.send("Write forever.", temperature=0.0, max_tokens=1_000_000, enable_thinking=False)
    assert reply.finish_reason == "cancelled"
    assert 0 < reply.completion_tokens < 1_000_000
    # The session goes on.
    assert session.send("Again", temperature=0.0, max_tokens=3).completion_tokens == 3


def test_ctrl_c_cancels_the_turn_and_keeps_the_session(lm):
    session = lm.chat()
    threading.Timer(0.3, _thread.interrupt_main).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        session.send("Write forever.", temperature=0.0, max_tokens=1_000_000, enable_thinking=False)
    assert time.monotonic() - started < 10
    assert session.messages[-1]["role"] == "assistant"  # the partial reply, as in Rust
    assert session.send("Again", temperature=0.0, max_tokens=3).completion_tokens == 3


def test_leaving_a_stream_early_cancels_it(lm):
    session = lm.chat()
    stream = session.stream("Write forever.", temperature=0.0, max_tokens=1_000_000, enable_thinking=False)
    next(stream)
    stream.close()
    assert list(stream) == []
    assert session.send("Again", temperature=0.0, max_tokens=3).completion_tokens == 3


def test_one_turn_at_a_time(lm):
    session = lm.chat()
    stream = session.stream("Hi", temperature=0.0, max_tokens=100_000)
    with pytest.raises(qwenrt.QwenrtError, match="in the middle of a turn"):
        session.send("Hi")
    stream.close()


def test_threads_share_one_model(lm):
    prompts = ["Hello", "What is 2+2?", "Name a colour.", "Say something."]
    alone = [lm.chat().send(p, temperature=0.0, max_tokens=12, enable_thinking=False).content for p in prompts]
    results = [None] * len(prompts)

    def worker(i):
        results[i] = lm.chat().send(prompts[i], temperature=0.0, max_tokens=12, enable_thinking=False).content

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone


def test_bad_input_is_an_exception(lm):
    with pytest.raises(ValueError, match="unknown dtype"):
        qwenrt.LanguageModel("x", dtype="int3")
    with pytest.raises(ValueError):
        lm.chat().send("x", temperature=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        lm.chat().send("x", temprature=0.5)
    with pytest.raises(TypeError):
        lm.chat().send("x", max_tokens="many")
    with pytest.raises(qwenrt.QwenrtError, match="longer than|context"):
        lm.chat().send("word " * 300_000, max_tokens=1)
