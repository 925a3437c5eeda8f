#!/usr/bin/env python3
"""Drives a running `qwenrt serve` with the official `openai` package, as an application would.

Run by crates/cli/tests/serve.rs against the tiny random-weight fixture models: the answers are
gibberish, so the checks are about the protocol. Chat whole and streamed (the same greedy
answer), reasoning, log-probs, a tool-call round trip, raw completions, structured output
(`parse()` into a Pydantic model, forced tool calls), embeddings, errors, and
parallel clients whose greedy answers equal the sequential ones. Exits non-zero on the first
failed check.
"""

import argparse
import concurrent.futures
import json
import sys
from typing import Literal

import openai
import pydantic

# <|endoftext|> and <|im_end|>: banned so that answers run to max_tokens.
NO_END = {"248044": -100, "248046": -100}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def chat_whole_and_streamed(client, model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    whole = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, logit_bias=NO_END
    )
    choice = whole.choices[0]
    check(choice.finish_reason == "length", f"finish_reason {choice.finish_reason}")
    check(choice.message.role == "assistant", "role")
    check(whole.usage.completion_tokens == 8, f"usage {whole.usage}")
    check(whole.usage.prompt_tokens > 5, f"usage {whole.usage}")

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=8,
        temperature=0,
        logit_bias=NO_END,
        stream=True,
        stream_options={"include_usage": True},
    )
    content, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    check(content == choice.message.content, f"streamed {content!r} != whole {choice.message.content!r}")
    check(finish == "length", f"streamed finish_reason {finish}")
    check(usage is not None and usage.completion_tokens == 8, f"streamed usage {usage}")
    # The conversation was seen before: its prompt comes from the prompt cache.
    cached = usage.prompt_tokens_details.cached_tokens
    check(cached > 0, f"cached tokens {cached}")


def reasoning_and_logprobs(client, model):
    thinking = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=6,
        temperature=0,
        # </think> banned too: every token is reasoning.
        logit_bias={**NO_END, "248069": -100},
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    message = thinking.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content")
    check(isinstance(reasoning, str) and reasoning, f"reasoning_content {reasoning!r}")
    details = thinking.usage.completion_tokens_details
    check(details.reasoning_tokens == 6, f"reasoning tokens {details}")

    scored = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to three"}],
        max_tokens=4,
        temperature=0,
        logit_bias=NO_END,
        logprobs=True,
        top_logprobs=2,
    )
    entries = scored.choices[0].logprobs.content
    check(len(entries) == 4, f"{len(entries)} logprob entries")
    check(all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries), "top_logprobs")
    check("".join(e.token for e in entries) == scored.choices[0].message.content, "tokens spell the answer")


def tool_round_trip(client, model):
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    answers = {}
    for choice in ["auto", "none"]:
        answer = client.chat.completions.create(
            model=model, messages=history, tools=[WEATHER_TOOL], tool_choice=choice, max_tokens=4, temperature=0
        )
        check(answer.choices[0].finish_reason in ("stop", "length", "tool_calls"), "finish_reason")
        answers[choice] = answer
    check(
        answers["auto"].usage.prompt_tokens > answers["none"].usage.prompt_tokens,
        "the tools are rendered into the prompt unless tool_choice is none",
    )


def raw_completion(client, model):
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0, logit_bias=NO_END)
    check(whole.choices[0].finish_reason == "length", "completion finish_reason")
    check(whole.usage.completion_tokens == 5, f"completion usage {whole.usage}")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt=prompt, max_tokens=5, temperature=0, logit_bias=NO_END, stream=True
        )
        if c.choices
    )
    check(streamed == whole.choices[0].text, "streamed completion equals the whole one")


def embeddings(client, embedding_model):
    if embedding_model is None:
        try:
            client.embeddings.create(model="none", input="hello")
        except openai.NotFoundError as e:
            check("no embedding model" in str(e), str(e))
        else:
            raise AssertionError("embeddings without an embedding model should fail")
        return
    # The package asks for base64 by default and decodes it.
    result = client.embeddings.create(model=embedding_model, input=["hello", "world"])
    check(len(result.data) == 2 and result.data[1].index == 1, "two embeddings")
    vector = result.data[0].embedding
    norm = sum(x * x for x in vector) ** 0.5
    check(abs(norm - 1) < 1e-4, f"unit vectors, got norm {norm}")
    floats = client.embeddings.create(model=embedding_model, input="hello", encoding_format="float")
    check(floats.data[0].embedding == vector, "float and base64 encodings agree")
    short = client.embeddings.create(model=embedding_model, input="hello", dimensions=8)
    check(len(short.data[0].embedding) == 8, "dimensions")
    check(result.usage.prompt_tokens > 0, "embedding usage")


class Forecast(pydantic.BaseModel):
    """What `parse()` fills in. Bounded, so that a random model finishes it."""

    city: str = pydantic.Field(max_length=8)
    days: int = pydantic.Field(ge=1, le=7)
    sky: Literal["clear", "cloudy", "rain"]
    hourly_mm: list[int] = pydantic.Field(max_length=3)


class GetTime(pydantic.BaseModel):
    zone: Literal["UTC", "CET", "JST"]


def structured_output(client, model):
    # The official parse(): the schema goes out as response_format json_schema (strict), the
    # answer comes back as a Forecast, whatever the random weights would rather write.
    for seed in range(3):
        result = client.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": "The forecast for Paris, please."}],
            response_format=Forecast,
            max_tokens=200,
            temperature=1.0,
            seed=seed,
        )
        parsed = result.choices[0].message.parsed
        check(isinstance(parsed, Forecast), f"parsed {parsed!r}")
        check(1 <= parsed.days <= 7 and len(parsed.city) <= 8, f"parsed {parsed!r}")

    # A forced call of a strict function tool, parsed into its model too.
    result = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "What time is it?"}],
        tools=[openai.pydantic_function_tool(GetTime)],
        tool_choice="required",
        max_tokens=200,
        temperature=0,
    )
    choice = result.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason}")
    call = choice.message.tool_calls[0].function
    check(call.name == "GetTime" and isinstance(call.parsed_arguments, GetTime), f"call {call}")

    # Any JSON object, streamed.
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Anything as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=150,
        temperature=0,
        stream=True,
    )
    content, finish = "", None
    for chunk in stream:
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    if finish == "stop":
        check(isinstance(json.loads(content), dict), f"streamed {content!r}")
    else:
        check(finish == "length" and content.lstrip().startswith("{"), f"streamed {content!r}")

    # A schema that does not compile is refused before generation, naming the field.
    try:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}},
        )
    except openai.BadRequestError as e:
        check(e.body.get("param") == "response_format", f"error body {e.body}")
    else:
        raise AssertionError("an invalid schema should be refused")


def errors(client, model, base_url, api_key):
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], n=2)
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"status {e.status_code}")
        check(isinstance(e.body, dict) and e.body.get("param") == "n", f"error body {e.body}")
    else:
        raise AssertionError("n=2 should be refused")
    if api_key != "none":
        intruder = openai.OpenAI(base_url=base_url, api_key="wrong-" + api_key, max_retries=0)
        try:
            intruder.models.list()
        except openai.AuthenticationError as e:
            check(e.status_code == 401, f"status {e.status_code}")
        else:
            raise AssertionError("a wrong API key should be refused")


def parallel_clients(client, model, count):
    prompts = [f"Tell me about number {i}" for i in range(count)]

    def ask(prompt):
        answer = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=10,
            temperature=0,
            logit_bias=NO_END,
        )
        return answer.choices[0].message.content

    sequential = [ask(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        parallel = list(pool.map(ask, prompts))
    check(parallel == sequential, f"parallel {parallel} != sequential {sequential}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--embedding-model", help="the served embedding model's name, if any")
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    models = [m.id for m in client.models.list()]
    check(models, "no models listed")
    model = models[0]
    if args.embedding_model:
        check(args.embedding_model in models, f"{args.embedding_model} not in {models}")

    checks = [
        ("chat, whole and streamed", lambda: chat_whole_and_streamed(client, model)),
        ("reasoning and log-probs", lambda: reasoning_and_logprobs(client, model)),
        ("tool-call round trip", lambda: tool_round_trip(client, model)),
        ("raw completion", lambda: raw_completion(client, model)),
        ("structured output", lambda: structured_output(client, model)),
        ("embeddings", lambda: embeddings(client, args.embedding_model)),
        ("errors", lambda: errors(client, model, args.base_url, args.api_key)),
        (f"{args.parallel} parallel clients", lambda: parallel_clients(client, model, args.parallel)),
    ]
    for name, run in checks:
        try:
            run()
        except Exception as e:  # report which check failed, then stop
            print(f"FAILED: {name}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"ok: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
