//! Chat messages and templates: render a model's own Jinja chat template exactly as Hugging Face transformers does.
//!
//! Models ship their prompt format as a Jinja template (`chat_template.jinja` or the `chat_template` entry of
//! `tokenizer_config.json`). Prompts must match what the model was trained on byte for byte, so this module
//! reproduces the environment of transformers' `apply_chat_template(..., tokenize=False)`:
//!
//! * `trim_blocks` and `lstrip_blocks` on, loop controls (`break`/`continue`), no auto-escaping;
//! * `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` filter that is Python's
//!   `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`;
//! * Python string/dict/list methods (`str.split`, `dict.items`, ...), and Python's `str()` wherever a value
//!   is printed or passed through the `string` filter (`True`, `None`, `1e-07`);
//! * the context transformers passes: `messages` (with `None` fields dropped and `reasoning_content` aliased),
//!   `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens (`eos_token`, ...),
//!   `enable_thinking` only when set, and any other `chat_template_kwargs`.
//!
//! Known gaps: `strftime_now` formats the current time in UTC, where Python uses the local time zone; the `~`
//! operator prints booleans and `none` the Jinja way (`true`, `none`) rather than Python's `True`/`None`;
//! integers wider than 64 bits arriving through JSON become floats.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{from_args, Kwargs, Rest, Serde, ValueKind, ValueOrKwargs};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, Value};
use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::vision::{ImageInput, VideoInput};

/// What can go wrong finding, compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template source is not valid Jinja (as far as minijinja understands it).
    #[error("chat template `{name}` does not compile: {source:#}")]
    Syntax { name: String, source: minijinja::Error },

    /// The template itself called `raise_exception(message)`: the conversation is not one it accepts.
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),

    /// The rendering ran past a limit: too many steps, or too much output.
    #[error("chat template stopped: {0}")]
    Limit(String),

    /// Rendering failed for another reason (undefined attribute, type error, ...).
    #[error("chat template failed to render: {0:#}")]
    Render(#[source] minijinja::Error),

    /// The model folder has neither `chat_template.jinja` nor a `chat_template` in `tokenizer_config.json`.
    #[error(
        "no chat template in {}: expected chat_template.jinja or a `chat_template` entry in tokenizer_config.json",
        .0.display()
    )]
    NotFound(PathBuf),

    /// The model has several named templates and none fits this request (no `default`, and no `tool_use`
    /// for a request with tools).
    #[error("the model has several chat templates but none named `default`; available: {}", .0.join(", "))]
    NoDefault(Vec<String>),

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// `tokenizer_config.json` exists but is not what transformers would accept.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// The request itself is inconsistent (e.g. `extra` overrides `messages`).
    #[error("invalid chat template request: {0}")]
    InvalidRequest(String),
}

mod message;
mod python;
mod template;

#[allow(unused_imports)] // the module's own helpers, shared by its files and its tests
use message::*;
pub use message::{message_media, ContentPart, FunctionCall, Message, MessageContent, ToolCall};
#[allow(unused_imports)]
use python::*;
#[allow(unused_imports)]
use template::*;
pub use template::{ChatTemplate, RenderRequest};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-7, "1e-07"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (2.5e20, "2.5e+20"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-1.5, "-1.5"),
            (100.0, "100.0"),
        ];
        for (x, want) in cases {
            assert_eq!(py::float_repr(x), want, "repr({x:e})");
        }
    }

    #[test]
    fn python_whitespace_split_and_strip() {
        assert_eq!(py::split_whitespace("  a b  c  ", Some(1)), ["a", "b  c  "]);
        assert_eq!(py::split_whitespace(" a b ", Some(0)), ["a b "]);
        assert_eq!(py::split_whitespace("\x1fa\x1cb", None), ["a", "b"]);
        assert!(py::split_whitespace(" \t ", None).is_empty());
        assert_eq!(py::strip("\x1f x \x1c", None, py::Side::Both).unwrap(), "x");
    }

    /// Hostile templates stop with an error naming the limit instead of hanging or exhausting
    /// memory.
    #[test]
    fn templates_run_within_limits() {
        let render = |source: &str| {
            let template = ChatTemplate::new(source).unwrap();
            template.render(&RenderRequest::new(&[Message::user("hi")])).map_err(|e| e.to_string())
        };
        assert_eq!(render("{{ messages[0].content }}").unwrap(), "hi");
        let e = render("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}").unwrap_err();
        assert!(e.contains("steps"), "{e}");
        let e = render("{{ messages | tojson(indent=10**12) }}").unwrap_err();
        assert!(e.contains("indent"), "{e}");
        let e = render("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}").unwrap_err();
        assert!(e.contains("MiB"), "{e}");
        let e = render("{{ 'x' * 10**12 }}").unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn generation_tags_become_transparent_blocks() {
        let src = "a{% generation %}b{%- endgeneration -%}c{% if x %}{% endif %}";
        assert_eq!(rewrite_generation_tags(src), "a{% if true %}b{%- endif -%}c{% if x %}{% endif %}");
        // Found by fuzzing: a `%}` overlapping its `{%` sliced backwards; an unclosed tag was
        // copied twice.
        assert_eq!(rewrite_generation_tags("x{%}y"), "x{%}y");
        assert_eq!(rewrite_generation_tags("a{% generation %}b{% if"), "a{% if true %}b{% if");
        assert!(ChatTemplate::new("{%}%- endif %}").is_err());
    }
}
