"""Qwen3.5 language models and Qwen3 embeddings on the CPU, from the qwenrt runtime.

>>> import qwenrt
>>> lm = qwenrt.LanguageModel("Qwen/Qwen3.5-0.8B")          # a folder or a hub id
>>> chat = qwenrt.ChatSession(lm, system="Be terse.")
>>> chat.send("Hello!").content
>>> for event in chat.stream("And then?"):
...     print(event.text, end="")
>>> emb = qwenrt.Embedder("Qwen/Qwen3-Embedding-0.6B")
>>> emb.encode(["a text", "another"], prompt_name="query").shape
"""

from ._qwenrt import (
    ChatSession,
    Embedder,
    Event,
    LanguageModel,
    QwenrtError,
    Reply,
    Stream,
    __version__,
)

__all__ = [
    "ChatSession",
    "Embedder",
    "Event",
    "LanguageModel",
    "QwenrtError",
    "Reply",
    "Stream",
    "__version__",
]
