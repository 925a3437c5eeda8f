"""Type stubs of the compiled module (see the Rust doc comments for the details)."""

import os
from typing import Iterator, Literal, Optional, Sequence, Union, overload

from typing_extensions import TypedDict, Unpack

import numpy as np
import numpy.typing as npt

__version__: str

Dtype = Literal["f32", "bf16", "f16", "int8", "int4"]

class QwenrtError(Exception):
    """A broken model folder, a failed download, input the model cannot take."""

class LanguageModel:
    """A Qwen3.5 (or Qwen3) language model; share one between sessions and threads."""

    path: str
    dtype: str
    def __init__(
        self, model: Union[str, os.PathLike[str]], *, dtype: Dtype = "int8", threads: Optional[int] = None
    ) -> None: ...
    @property
    def max_context(self) -> int: ...
    def chat(self, system: Optional[str] = None) -> "ChatSession": ...

class Reply:
    content: str
    reasoning: str
    finish_reason: str
    tokens: list[int]
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    time_to_first_token: float
    decode_time: float

class Event:
    kind: Literal["reasoning", "content", "done"]
    text: str
    reply: Optional[Reply]

class Stream(Iterator[Event]):
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> Event: ...
    def close(self) -> None: ...

class TurnOptions(TypedDict, total=False):
    """What `send` and `stream` take besides the text; each overrides generation_config.json."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    seed: int
    stop: Sequence[str]
    enable_thinking: bool
    max_thinking_tokens: int

class ChatSession:
    """A conversation: messages, state and prompt cache. One turn at a time."""

    def __init__(self, model: LanguageModel, system: Optional[str] = None) -> None: ...
    def send(self, text: str, **options: Unpack[TurnOptions]) -> Reply: ...
    def stream(self, text: str, **options: Unpack[TurnOptions]) -> Stream: ...
    def cancel(self) -> None: ...
    def reset(self) -> None: ...
    @property
    def messages(self) -> list[dict[str, Optional[str]]]: ...

class Embedder:
    """A Qwen3-Embedding model (sentence-transformers layout)."""

    path: str
    def __init__(
        self, model: Union[str, os.PathLike[str]], *, dtype: Dtype = "int8", threads: Optional[int] = None
    ) -> None: ...
    @property
    def dimension(self) -> int: ...
    @property
    def max_seq_length(self) -> int: ...
    @overload
    def encode(
        self,
        sentences: str,
        *,
        prompt_name: Optional[Literal["query", "document"]] = None,
        instruction: Optional[str] = None,
        dimensions: Optional[int] = None,
        batch_size: int = 32,
        truncate: bool = False,
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def encode(
        self,
        sentences: Sequence[str],
        *,
        prompt_name: Optional[Literal["query", "document"]] = None,
        instruction: Optional[str] = None,
        dimensions: Optional[int] = None,
        batch_size: int = 32,
        truncate: bool = False,
    ) -> npt.NDArray[np.float32]: ...
