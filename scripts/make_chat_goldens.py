#!/usr/bin/env python3
"""Render golden chat-template outputs with transformers for the Rust renderer's tests.

Writes, next to the template in fixtures/chat/qwen3_5/:
  cases.json    conversations rendered by tokenizer.apply_chat_template(..., tokenize=False)
  filters.json  small templates exercising the filters transformers registers (tojson, string, trim)

Usage: python3 scripts/make_chat_goldens.py   (needs transformers>=5, tokenizers, jinja2>=3.1.6)
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = ROOT / "fixtures" / "chat" / "qwen3_5"
TEMPLATE_PATH = FIXTURE_DIR / "chat_template.jinja"

# Key order inside every schema is deliberately not sorted ("type" before "function", "required" before
# "properties", ...) because tojson must keep insertion order. Descriptions carry characters that Jinja's
# own tojson would HTML-escape and that a non-Python JSON writer would print differently.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle pour une ville — 天气 & <forecast> \"quoted\" 'single' </script>",
        "parameters": {
            "type": "object",
            "required": ["location"],
            "properties": {
                "location": {"type": "string", "description": "City name, e.g. \"Zürich\" or 東京"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14, "default": 3},
                "threshold": {"type": "number", "minimum": 0.0, "maximum": 1.0, "multipleOf": 1e-07},
                "filters": {
                    "type": "object",
                    "properties": {
                        "wind": {"type": "boolean", "default": False},
                        "levels": {"type": "array", "items": {"type": "number"}, "default": [0.5, 1, 2.25]},
                    },
                    "additionalProperties": False,
                },
            },
        },
    },
}

# A flat tool (no "function" wrapper); the template just dumps each entry, so this form is legal too.
SEARCH_TOOL = {
    "name": "search_docs",
    "description": "Search the docs.\n\tTabs, newlines, a \u0001 control char, \u2028 line sep, emoji 🚀 and a backslash \\ .",
    "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "Query text; supports a && b || !c"},
            "limit": {"type": ["integer", "null"], "default": None},
            "ranking": {
                "type": "object",
                "properties": {
                    "boost": {"type": "number", "default": 2.5e20},
                    "fields": {"type": "array", "items": {"type": "string"}, "default": ["title", "body"]},
                },
            },
        },
        "required": ["query"],
    },
}

TOOLS = [WEATHER_TOOL, SEARCH_TOOL]

WEATHER_ARGS = {
    "location": "Paris <17e> & \"Île\"",
    "days": 3,
    "threshold": 0.1,
    "filters": {"wind": True, "levels": [1.0, 2, 1e-07]},
}

# Non-string scalars go through Python's str() (True, None, 1e-07, -0.0) and containers through tojson.
SCALAR_ARGS = {
    "float_one": 1.0,
    "float_tiny": 1e-07,
    "float_big": 2.5e20,
    "float_plain": 0.1,
    "neg_zero": -0.0,
    "big_int": 12345678901234567890,
    "neg_int": -42,
    "flag": False,
    "nothing": None,
    "text": "line one\nline two </parameter> <tag> & done",
    "empty_obj": {},
    "empty_list": [],
    "mixed": [1, 2.0, "x", None, True, {"k": "v"}],
    "nested": {"b": {"é": "ü", "a": [1, {"z": None}]}, "a": "<>&'\""},
}


def user(content, **kw):
    return {"role": "user", "content": content, **kw}


def assistant(content, **kw):
    return {"role": "assistant", "content": content, **kw}


def system(content):
    return {"role": "system", "content": content}


def tool(content, **kw):
    return {"role": "tool", "content": content, **kw}


def call(name, arguments, call_id=None):
    tc = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        tc = {"id": call_id, **tc}
    return tc


def case(name, messages, *, tools=None, add_generation_prompt=True, enable_thinking=None, extra=None, error=None):
    return {
        "name": name,
        "messages": messages,
        "tools": tools,
        "add_generation_prompt": add_generation_prompt,
        "enable_thinking": enable_thinking,
        "extra": extra or {},
        "error": error,
    }


CASES = [
    case("single_user", [user("Hello!")]),
    case("single_user_thinking", [user("Hello!")], enable_thinking=True),
    case("single_user_no_thinking", [user("Hello!")], enable_thinking=False),
    case(
        "system_user",
        [system("You are a helpful assistant."), user("What is 2+2?")],
        enable_thinking=True,
    ),
    case(
        "multi_turn",
        [
            system("  Be brief.  \n"),
            user("Hi"),
            assistant("Hello! How can I help?"),
            user("Tell me a joke."),
            assistant("Why did the chicken cross the road?"),
            user("Why?"),
        ],
    ),
    case(
        "no_generation_prompt_final_assistant",
        [user("Ping"), assistant("Pong")],
        add_generation_prompt=False,
    ),
    case(
        "reasoning_before_and_after_last_query",
        [
            user("First question"),
            assistant("First answer", reasoning_content="Thinking about the first question."),
            user("Second question"),
            assistant("Second answer", reasoning_content="  \nThinking about the second.\n\n  "),
        ],
        add_generation_prompt=False,
        enable_thinking=True,
    ),
    case(
        "inline_think_tags",
        [
            user("Q1"),
            assistant("<think>\nold plan\n</think>\n\nold answer"),
            user("Q2"),
            assistant("<think>\n\nnew plan\n\n</think>\n\n\nnew answer"),
            user("Q3"),
            assistant("prefix <think>x</think> a </think> tail"),
        ],
        add_generation_prompt=False,
    ),
    case(
        "reasoning_aliases_and_empty",
        [
            user("Q1"),
            assistant("A1", thinking="dropped: before the last query"),
            user("Q2"),
            assistant("A2", reasoning="legacy reasoning key"),
            assistant("A3", thinking="thinking key"),
            assistant("A4", reasoning_content=""),
        ],
        add_generation_prompt=True,
        enable_thinking=True,
    ),
    case(
        "tools_no_system",
        [user("What's the weather in Paris & <Lyon>?")],
        tools=TOOLS,
    ),
    case(
        "tools_with_system_call_and_response",
        [
            system("You are a weather bot."),
            user("Weather in Paris?"),
            assistant("", tool_calls=[call("get_weather", WEATHER_ARGS, "call_1")]),
            tool('{"temp": 21.5, "sky": "clear ☀"}', tool_call_id="call_1", name="get_weather"),
            assistant("It is 21.5 °C and clear.", reasoning_content="The tool said 21.5."),
        ],
        tools=TOOLS,
        add_generation_prompt=True,
        enable_thinking=True,
    ),
    case(
        "parallel_tool_calls_two_responses",
        [
            user("Compare Paris and Tokyo, and search the docs."),
            assistant(
                "Let me check both.",
                reasoning_content="Two calls needed.",
                tool_calls=[
                    call("get_weather", {"location": "Paris"}, "a"),
                    call("search_docs", {"query": "東京 weather", "limit": 5}, "b"),
                ],
            ),
            tool("Paris: 20°C", tool_call_id="a"),
            tool("Result: <b>bold</b> & more", tool_call_id="b"),
            assistant("Paris is 20°C."),
            user("Thanks"),
        ],
        tools=TOOLS,
        enable_thinking=False,
    ),
    case(
        "tool_call_scalar_arguments",
        [
            user("Do it"),
            assistant("  \n", tool_calls=[call("search_docs", SCALAR_ARGS)]),
            tool("ok"),
        ],
        tools=[SEARCH_TOOL],
        add_generation_prompt=True,
    ),
    case(
        "tool_call_null_content",
        [
            user("Weather?"),
            assistant(None, tool_calls=[call("get_weather", {"location": "Oslo"}, "x1")]),
            tool("cold", tool_call_id="x1"),
            assistant("It is cold."),
        ],
        tools=TOOLS,
        add_generation_prompt=False,
    ),
    case(
        "tool_response_wrapped_in_user_turn",
        [
            user("Find the docs"),
            assistant("", tool_calls=[call("search_docs", {"query": "install"})]),
            user("  <tool_response>\n{\"hits\": 2}\n</tool_response>  "),
            assistant("Found 2 hits.", reasoning_content="Two hits came back."),
        ],
        tools=TOOLS,
        add_generation_prompt=False,
    ),
    case(
        "empty_tools_list",
        [system("System text"), user("Hi")],
        tools=[],
    ),
    case(
        "content_parts_with_vision_ids",
        [
            system([{"type": "text", "text": "System "}, {"type": "text", "text": "in parts."}]),
            user(
                [
                    {"type": "text", "text": "Look at these: "},
                    {"type": "image", "image": "file:///a.png"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
                    {"type": "video", "video": "file:///c.mp4"},
                    {"type": "text", "text": " thanks"},
                ]
            ),
            assistant([{"type": "text", "text": "I see two images and a video."}]),
            user([{"type": "image", "image": "file:///d.png"}, {"type": "text", "text": "And this?"}]),
        ],
        extra={"add_vision_id": True},
    ),
    case(
        "content_parts_without_vision_ids",
        [
            user(
                [
                    {"type": "image"},
                    {"type": "text", "text": "Describe."},
                    {"type": "video"},
                ]
            ),
        ],
        tools=TOOLS,
        extra={"add_vision_id": False, "unused_kwarg": "ignored"},
    ),
    case(
        "special_characters_and_whitespace",
        [
            system("\u3000\u00a0System with <tags> & \"quotes\"\u001f\n"),
            user("\x1c  Unicode: 你好, emoji 🚀👍🏽, RTL שלום, math ∑ — <b>&amp;</b> 'single' \"double\" back\\slash\t\x1f"),
            assistant("Answer with trailing spaces   \u2003"),
            user("\u2028second line sep\u2029"),
        ],
        tools=None,
    ),
    case(
        "tool_message_last",
        [
            user("Weather?"),
            assistant("Checking.", tool_calls=[call("get_weather", {"location": "Rome"})]),
            tool("  sunny  "),
        ],
        tools=TOOLS,
        enable_thinking=True,
    ),
    case(
        "error_system_not_first",
        [user("Hi"), system("late system")],
        error="System message must be at the beginning.",
    ),
    case("error_no_user_query", [system("Only system")], error="No user query found in messages."),
    case(
        "error_only_tool_response_user",
        [user("<tool_response>\nx\n</tool_response>")],
        error="No user query found in messages.",
    ),
    case("error_unexpected_role", [user("Hi"), {"role": "developer", "content": "x"}], error="Unexpected message role."),
    case(
        "error_system_image",
        [system([{"type": "image", "image": "x.png"}]), user("Hi")],
        error="System message cannot contain images.",
    ),
    case(
        "error_system_video_with_tools",
        [system([{"type": "video", "video": "x.mp4"}]), user("Hi")],
        tools=TOOLS,
        error="System message cannot contain videos.",
    ),
    case(
        "error_unexpected_content_item",
        [user([{"type": "audio", "audio_url": "x.wav"}])],
        error="Unexpected item type in content.",
    ),
]

# Each filter case renders `template` with `value` bound; the expected text is both what transformers' jinja
# environment renders and (for tojson) what json.dumps prints, checked below.
TRICKY_VALUE = {
    "floats": [1e-07, 0.1, 1.0, -0.0, 2.5e20, 1e16, 1234567890123456.0, 0.0001, 1e-05, 123.456, 5e-324, 1.7976931348623157e308],
    "ints": [0, -1, 9007199254740993, 12345678901234567890, -9223372036854775808],
    "text": "</script> <b>&amp;</b> 'q' \"dq\" \\ \n\r\t\b\f \u0000\u001f\u007f \u2028\u2029 é 你好 🚀",
    "bools": [True, False, None],
    "empty": {"list": [], "obj": {}},
    "z_last": {"b": 1, "a": {"d": [1, [2, {}]], "c": "x"}},
}

FILTER_CASES = [
    ("tojson_default", "{{ value | tojson }}", TRICKY_VALUE, lambda v: json.dumps(v, ensure_ascii=False)),
    ("tojson_indent_2", "{{ value | tojson(indent=2) }}", TRICKY_VALUE, lambda v: json.dumps(v, ensure_ascii=False, indent=2)),
    ("tojson_indent_0", "{{ value | tojson(indent=0) }}", TRICKY_VALUE["z_last"], lambda v: json.dumps(v, ensure_ascii=False, indent=0)),
    (
        "tojson_indent_string",
        "{{ value | tojson(indent='\\t') }}",
        TRICKY_VALUE["z_last"],
        lambda v: json.dumps(v, ensure_ascii=False, indent="\t"),
    ),
    (
        "tojson_sort_keys_separators",
        "{{ value | tojson(separators=(',', ':'), sort_keys=true) }}",
        TRICKY_VALUE,
        lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
    ),
    (
        "tojson_indent_with_separators",
        "{{ value | tojson(indent=1, separators=(', ', ' = ')) }}",
        TRICKY_VALUE["z_last"],
        lambda v: json.dumps(v, ensure_ascii=False, indent=1, separators=(", ", " = ")),
    ),
    (
        "tojson_ensure_ascii",
        "{{ value | tojson(ensure_ascii=true) }}",
        TRICKY_VALUE["text"],
        lambda v: json.dumps(v, ensure_ascii=True),
    ),
    ("tojson_positional_ensure_ascii", "{{ value | tojson(true, 2) }}", ["é", {"ü": 1}], lambda v: json.dumps(v, ensure_ascii=True, indent=2)),
    ("tojson_scalar_string", "{{ value | tojson }}", "a\"b", lambda v: json.dumps(v, ensure_ascii=False)),
    ("tojson_scalar_float", "{{ value | tojson }}", 3.0, lambda v: json.dumps(v, ensure_ascii=False)),
    ("string_filter_scalars", "{% for v in value %}[{{ v | string }}]{% endfor %}", [1.0, 1e-07, -0.0, 2.5e20, 7, True, False, None, "s"], None),
    ("print_scalars", "{% for v in value %}[{{ v }}]{% endfor %}", [1.0, 1e-07, 1e16, True, None, "s"], None),
    ("print_containers", "{{ value }}", {"a": [1, 2.5, None, True, "it's"], "b": {"c": 'say "hi"'}}, None),
    ("trim_python_whitespace", "[{{ value | trim }}]", "\x1c\x1f \u00a0\u3000 body \u2003\t\n\x1e", None),
    ("strip_methods", "[{{ value.strip() }}|{{ value.lstrip() }}|{{ value.rstrip() }}]", "\x1f x \x1c", None),
    ("split_whitespace", "{{ value.split() | tojson }}|{{ value.split(none, 1) | tojson }}", "\x1f a  b\x1cc \u3000d ", None),
    ("items_order", "{% for k, v in value | items %}{{ k }}={{ v }};{% endfor %}", {"z": 1, "a": 2, "m": 3}, None),
]


def make_tokenizer(template: str):
    # apply_chat_template only needs a tokenizer object carrying the template; the vocabulary is irrelevant for
    # tokenize=False. The special tokens mirror Qwen's tokenizer_config so they reach the template as kwargs.
    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = template
    return tok


def render_case(tok, c):
    kwargs = dict(c["extra"])
    if c["enable_thinking"] is not None:
        kwargs["enable_thinking"] = c["enable_thinking"]
    # apply_chat_template normalises the messages in place-ish ways on copies; keep the stored ones pristine.
    return tok.apply_chat_template(
        copy.deepcopy(c["messages"]),
        tools=copy.deepcopy(c["tools"]),
        add_generation_prompt=c["add_generation_prompt"],
        tokenize=False,
        **kwargs,
    )


def main() -> int:
    template = TEMPLATE_PATH.read_text(encoding="utf-8")
    tok = make_tokenizer(template)

    out = []
    names = set()
    for c in CASES:
        assert c["name"] not in names, c["name"]
        names.add(c["name"])
        entry = {k: v for k, v in c.items() if k != "error"}
        if c["error"] is not None:
            try:
                render_case(tok, c)
            except Exception as exc:  # noqa: BLE001 - the template raises jinja2 TemplateError
                assert c["error"] in str(exc), (c["name"], str(exc))
                entry["error"] = True
                entry["expected_error"] = c["error"]
            else:
                raise AssertionError(f"{c['name']}: expected the template to raise")
        else:
            entry["error"] = False
            entry["expected"] = render_case(tok, c)
        out.append(entry)

    filters = []
    for name, source, value, reference in FILTER_CASES:
        rendered = _compile_jinja_template(source).render(value=copy.deepcopy(value))
        if reference is not None:
            assert rendered == reference(value), name
        filters.append({"name": name, "template": source, "value": value, "expected": rendered})

    for path, data in ((FIXTURE_DIR / "cases.json", out), (FIXTURE_DIR / "filters.json", filters)):
        path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)} ({len(data)} cases)")
    print(f"transformers {transformers.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
