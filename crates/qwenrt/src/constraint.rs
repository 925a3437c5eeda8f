//! Constrained decoding: the answer of a turn follows a JSON Schema, a regular expression, a Lark
//! grammar or the model's tool-call format, whatever the weights would rather write.
//!
//! Before each sample, the set of tokens that keep the text a prefix of some sentence of the
//! grammar is computed ([`llguidance`], on a token trie built once per model), every other logit
//! becomes `-inf`, and only then do the sampling parameters apply: bias, penalties, temperature,
//! top-k/p, min-p, or greedy, all within the allowed set. The stop tokens are allowed exactly when
//! the text so far is a complete sentence; when the grammar admits nothing more, the turn ends
//! right there with [`FinishReason::Stop`](crate::FinishReason::Stop).
//!
//! With thinking on, the thought is free: the mask starts after `</think>` (the model's own or
//! the one a thinking budget forces), once the blank line the chat template puts before an answer
//! has been fed.
//!
//! ```no_run
//! # use std::sync::Arc;
//! use qwenrt::{chat::Message, ChatSession, Constraint, LanguageModel};
//! # let lm = Arc::new(LanguageModel::load("Qwen3.5-0.8B".as_ref())?);
//! let mut params = lm.default_params();
//! params.constraint = Some(Constraint::JsonSchema(serde_json::json!({
//!     "type": "object",
//!     "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
//!     "required": ["city", "days"],
//!     "additionalProperties": false,
//! })));
//! let reply = ChatSession::new(lm).send(Message::user("Weather in Paris for 3 days?"), &params, |_| {})?;
//! let answer: serde_json::Value = serde_json::from_str(&reply.content).expect("valid by construction");
//! # Ok::<(), qwenrt::Error>(())
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
pub use crate::tool_calls::ToolCallFormat;

/// What the answer must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `{"type": "json_object"}`).
    Json,
    /// A JSON value valid against this JSON Schema (draft 2020-12 and the usual older keywords;
    /// `$ref`/`$defs`, `anyOf`, `pattern` unanchored as the standard says). A keyword the
    /// compiler cannot enforce is an error, never ignored.
    JsonSchema(Value),
    /// Text matched as a whole by this regular expression (Rust `regex` syntax).
    Regex(String),
    /// Text in the language of this Lark grammar, as llguidance reads it (`start` is the start
    /// rule; `%json {…}` embeds a JSON Schema).
    Grammar(String),
    /// One or more tool calls in the model's tool-call format (see [`crate::tool_calls`]), each
    /// naming one of `tools` (OpenAI's `[{"type": "function", "function": {"name", "parameters"}}]`)
    /// with arguments valid against its `parameters` schema; only `function` when it names one.
    /// This is OpenAI's `tool_choice: "required"` or `{"type": "function", …}`.
    ToolCalls { tools: Vec<Value>, function: Option<String> },
}

/// Whitespace JSON may have between its tokens: one space, or a line break and up to 20 spaces or
/// tabs of indentation (llama.cpp's rule). Unbounded whitespace lets a small model loop on blank
/// lines forever; a schema's own `"x-guidance"` options take precedence.
const JSON_WHITESPACE: &str = r"(?: |\n[ \t]{0,20})";

/// The token trie over a model's vocabulary and the grammar compiler built on it: made once per
/// model (it walks the whole vocabulary), shared by every constrained turn.
pub(crate) struct Guide {
    factory: ParserFactory,
    vocab_size: usize,
    stop_ids: Vec<u32>,
}

impl Guide {
    /// `vocab_size` is the model's logit count (it may exceed the tokenizer's: those ids are never
    /// allowed); `stop_ids` end a complete answer.
    pub(crate) fn new(tokenizer: &Tokenizer, vocab_size: usize, stop_ids: &[u32]) -> Result<Self> {
        Self::from_words(&tokenizer.trie_words(vocab_size), stop_ids)
    }

    /// From every id's bytes (special tokens behind the 0xFF marker).
    fn from_words(words: &[Vec<u8>], stop_ids: &[u32]) -> Result<Self> {
        let vocab_size = words.len();
        let &eos = stop_ids
            .first()
            .ok_or_else(|| Error::InvalidInput("constrained decoding needs a stop token".into()))?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab_size as u32, eos), words).with_eos_tokens(stop_ids);
        let env: TokEnv = Arc::new(TrieEnv { trie });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::InvalidInput(format!("cannot set up constrained decoding: {e}")))?;
        factory.quiet();
        Ok(Guide { factory, vocab_size, stop_ids: stop_ids.to_vec() })
    }

    /// Compiles `constraint`: every error in it (a schema keyword, a regex, a grammar) surfaces
    /// here, before generation.
    pub(crate) fn compile(&self, constraint: &Constraint, format: ToolCallFormat) -> Result<GuidedText> {
        let grammar = match constraint {
            Constraint::Json => TopLevelGrammar::from_json_schema(with_whitespace(json!({"type": "object"}))),
            Constraint::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(invalid(constraint, "a JSON Schema is an object (or true/false)".into()));
                }
                TopLevelGrammar::from_json_schema(with_whitespace(schema.clone()))
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Constraint::ToolCalls { tools, function } => {
                TopLevelGrammar::from_lark(tool_call_grammar(tools, function.as_deref(), format)?)
            }
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| invalid(constraint, e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(constraint, e));
        }
        Ok(GuidedText {
            matcher,
            vocab_size: self.vocab_size,
            stop_ids: self.stop_ids.clone(),
            next: None,
            mask_time: Duration::ZERO,
            masks: 0,
        })
    }
}

fn invalid(constraint: &Constraint, reason: String) -> Error {
    let what = match constraint {
        Constraint::Json | Constraint::JsonSchema(_) => "JSON Schema",
        Constraint::Regex(_) => "regular expression",
        Constraint::Grammar(_) => "grammar",
        Constraint::ToolCalls { .. } => "tool definitions",
    };
    Error::InvalidInput(format!("invalid {what}: {reason}"))
}

/// Adds the bounded whitespace rule unless the schema chose its own.
fn with_whitespace(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        if !map.contains_key("x-guidance") {
            map.insert("x-guidance".into(), json!({"whitespace_pattern": JSON_WHITESPACE}));
        }
    }
    schema
}

/// The vocabulary as llguidance sees it. Grammar literals are never tokenized here (masks only
/// need the trie), so the trie's own greedy split stands in for the tokenizer.
struct TrieEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// One answer's progress through its grammar.
pub(crate) struct GuidedText {
    matcher: Matcher,
    vocab_size: usize,
    stop_ids: Vec<u32>,
    /// The mask for the next token, computed as soon as the last one was consumed: it also tells
    /// whether the answer is complete.
    next: Option<SimpleVob>,
    mask_time: Duration,
    masks: usize,
}

impl GuidedText {
    /// The tokens allowed next (one bit per id, 32 ids per word).
    pub(crate) fn mask(&mut self) -> Result<&SimpleVob> {
        if self.next.is_none() {
            let start = Instant::now();
            let mask =
                self.matcher.compute_mask_or_eos().map_err(|e| self.error("computing the token mask", e));
            self.mask_time += start.elapsed();
            self.masks += 1;
            let mask = mask?;
            debug_assert!(mask.len() >= self.vocab_size);
            self.next = Some(mask);
        }
        Ok(self.next.as_ref().expect("just computed"))
    }

    /// Moves past a sampled token (one the last mask allowed) and computes the next mask.
    pub(crate) fn consume(&mut self, token: u32) -> Result<()> {
        self.next = None;
        self.matcher.consume_token(token).map_err(|e| self.error("advancing the grammar", e))?;
        self.mask().map(drop)
    }

    /// Whether the grammar admits nothing more but a stop token: the answer is complete.
    pub(crate) fn is_complete(&self) -> bool {
        if self.matcher.is_stopped() {
            return true;
        }
        self.next.as_ref().is_some_and(|mask| {
            mask.num_set() <= self.stop_ids.len() && mask.iter().all(|id| self.stop_ids.contains(&id))
        })
    }

    /// Time spent computing masks, and how many were computed.
    pub(crate) fn mask_time(&self) -> (Duration, usize) {
        (self.mask_time, self.masks)
    }

    fn error(&self, doing: &str, e: impl std::fmt::Display) -> Error {
        Error::InvalidInput(format!("constrained decoding failed while {doing}: {e}"))
    }
}

/// The Lark grammar of one or more tool calls, as the model's chat template renders them.
fn tool_call_grammar(tools: &[Value], only: Option<&str>, format: ToolCallFormat) -> Result<String> {
    let bad = |reason: String| Error::InvalidInput(format!("invalid tool definitions: {reason}"));
    let mut functions = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let function = tool.get("function").unwrap_or(tool);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad(format!("tool {i} has no function name")))?;
        let parameters = function.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
        if !parameters.is_object() {
            return Err(bad(format!("the parameters of {name:?} are not a JSON Schema object")));
        }
        if only.is_none_or(|wanted| wanted == name) {
            functions.push((name, parameters));
        }
    }
    if functions.is_empty() {
        return Err(bad(match only {
            Some(name) => format!("no tool is named {name:?}"),
            None => "a tool call is required but no tools are given".into(),
        }));
    }
    let mut lark = String::from("start: call (\"\\n\" call)*\n");
    let alternatives: Vec<String> = (0..functions.len()).map(|i| format!("fn_{i}")).collect();
    match format {
        ToolCallFormat::Xml => {
            lark.push_str(&format!(
                "call: \"<tool_call>\\n\" ({}) \"</tool_call>\"\n",
                alternatives.join(" | ")
            ));
            for (i, (name, parameters)) in functions.iter().enumerate() {
                xml_function(&mut lark, i, name, parameters)
                    .map_err(|e| bad(format!("function {name:?}: {e}")))?;
            }
        }
        ToolCallFormat::Json => {
            lark.push_str(&format!(
                "call: \"<tool_call>\\n\" ({}) \"\\n</tool_call>\"\n",
                alternatives.join(" | ")
            ));
            for (i, (name, parameters)) in functions.iter().enumerate() {
                let mut schema = json!({
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                });
                // The arguments' `$ref`s point at the root of `parameters`, which is now nested.
                if let Value::Object(root) = &mut schema {
                    root.extend(definitions(parameters));
                }
                let schema = with_whitespace(schema);
                lark.push_str(&format!("fn_{i}: %json {schema}\n"));
            }
        }
    }
    Ok(lark)
}

/// A lark string literal (lark reads JSON string syntax).
fn literal(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

/// What closes a parameter value; the value itself never contains `</parameter>` or
/// `</tool_call>` (the parser splits on the first of each).
const PARAM_CLOSE: &str = "\n</parameter>\n";
const NO_CLOSING_TAGS: &str =
    r"~/(?s:.*)<\/parameter>(?s:.*)<\/parameter>(?s:.*)/ & ~/(?s:.*)<\/tool_call>(?s:.*)/";

/// `fn_i`: one function's call in Qwen3.5's XML, parameters in the schema's order, required ones
/// always, optional ones at most once.
fn xml_function(
    lark: &mut String,
    i: usize,
    name: &str,
    parameters: &Value,
) -> std::result::Result<(), String> {
    if name.contains(['>', '<', '\n']) {
        return Err("the name cannot be written in the XML call format".into());
    }
    let properties = parameters.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    let required: Vec<&str> = parameters
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(missing) = required.iter().find(|r| !properties.contains_key(**r)) {
        return Err(format!("required parameter {missing:?} is not among its properties"));
    }
    let defs = definitions(parameters);
    let mut body = Vec::new();
    for (k, (key, schema)) in properties.iter().enumerate() {
        if key.contains(['>', '<', '\n']) {
            return Err(format!("parameter name {key:?} cannot be written in the XML call format"));
        }
        let rule = format!("p_{i}_{k}");
        let open = literal(&format!("<parameter={key}>\n"));
        let value = xml_value(lark, &rule, schema, parameters, &defs)
            .map_err(|e| format!("parameter {key:?}: {e}"))?;
        lark.push_str(&format!("{rule}: {open} {value}\n"));
        body.push(if required.contains(&key.as_str()) { rule } else { format!("{rule}?") });
    }
    let free = properties.is_empty() && parameters.get("additionalProperties") != Some(&Value::Bool(false));
    if free {
        // No declared parameters: any names, text values.
        lark.push_str(&format!(
            "PNAME_{i}: /[A-Za-z_][A-Za-z0-9_.\\-]*/\nPFREE_{i}: /(?s:.*)\\n<\\/parameter>\\n/ & {NO_CLOSING_TAGS}\n"
        ));
        body.push(format!("(\"<parameter=\" PNAME_{i} \">\\n\" PFREE_{i})*"));
    }
    lark.push_str(&format!(
        "fn_{i}: {} {} \"</function>\\n\"\n",
        literal(&format!("<function={name}>\n")),
        body.join(" ")
    ));
    Ok(())
}

/// `$defs`/`definitions` of a parameters schema, to carry into each parameter's own schema so
/// that its `$ref`s still resolve.
fn definitions(parameters: &Value) -> Map<String, Value> {
    let mut defs = Map::new();
    for key in ["$defs", "definitions"] {
        if let Some(d) = parameters.get(key) {
            defs.insert(key.to_owned(), d.clone());
        }
    }
    defs
}

/// The grammar of one XML parameter value followed by its closing tag. Text for a string
/// parameter (the template writes strings as they are), JSON for every other type (the template
/// writes those with `tojson`/`str`, and the parser reads them back as JSON).
fn xml_value(
    lark: &mut String,
    rule: &str,
    schema: &Value,
    parameters: &Value,
    defs: &Map<String, Value>,
) -> std::result::Result<String, String> {
    let resolved = crate::tool_calls::resolve_ref(schema, parameters);
    let types = crate::tool_calls::schema_types(resolved, parameters);
    let token = rule.to_uppercase();
    if types.iter().any(|t| t == "string") {
        let strings_only = types.iter().all(|t| t == "string");
        let choices = resolved
            .get("enum")
            .and_then(Value::as_array)
            .cloned()
            .or_else(|| resolved.get("const").map(|c| vec![c.clone()]));
        if let (true, Some(choices)) = (strings_only, choices) {
            let texts: Vec<String> = choices
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.contains("</parameter>") && !s.contains("</tool_call>"))
                .map(|s| literal(&format!("{s}{PARAM_CLOSE}")))
                .collect();
            if texts.is_empty() {
                return Err("no enum value can be written as XML text".into());
            }
            return Ok(format!("({})", texts.join(" | ")));
        }
        let mut conjuncts = vec![format!(r"/(?s:.*)\n<\/parameter>\n/ & {NO_CLOSING_TAGS}")];
        if strings_only {
            let min = resolved.get("minLength").and_then(Value::as_u64).unwrap_or(0);
            match resolved.get("maxLength").and_then(Value::as_u64) {
                Some(max) if max < min => return Err("maxLength is below minLength".into()),
                Some(max) => conjuncts.push(format!(r"/(?s:.{{{min},{max}}})\n<\/parameter>\n/")),
                None if min > 0 => conjuncts.push(format!(r"/(?s:.{{{min},}})\n<\/parameter>\n/")),
                None => {}
            }
            if let Some(pattern) = resolved.get("pattern").and_then(Value::as_str) {
                conjuncts.push(format!(r"/{}\n<\/parameter>\n/", unanchored(pattern)));
            }
        }
        lark.push_str(&format!("{token}: {}\n", conjuncts.join(" & ")));
        return Ok(token);
    }
    let mut own = schema.clone();
    if let (Value::Object(map), false) = (&mut own, defs.is_empty()) {
        for (k, v) in defs {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Ok(format!("%json {} {}", with_whitespace(own), literal(PARAM_CLOSE)))
}

/// A JSON Schema `pattern` (a search, not a full match) as a lark regex body matching whole text:
/// anchors at the ends are honoured, otherwise anything may surround the match.
fn unanchored(pattern: &str) -> String {
    let (start, rest) = match pattern.strip_prefix('^') {
        Some(rest) => ("", rest),
        None => ("(?s:.*)", pattern),
    };
    let (body, end) = match rest.strip_suffix('$').filter(|b| !b.ends_with('\\')) {
        Some(body) => (body, ""),
        None => (rest, "(?s:.*)"),
    };
    format!("{start}(?:{}){end}", escape_slashes(body))
}

/// Escapes the `/` that would end a lark regex literal, leaving escaped characters as they are.
fn escape_slashes(regex: &str) -> String {
    let mut out = String::with_capacity(regex.len());
    let mut chars = regex.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                out.extend(chars.next());
            }
            '/' => out.push_str(r"\/"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// A byte-level vocabulary: ids 0–255 are the bytes, 256 a special end token.
    fn byte_guide() -> Guide {
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        words.push(b"\xFF<|end|>".to_vec());
        Guide::from_words(&words, &[256]).unwrap()
    }

    /// A random walk through the grammar: any allowed byte, the end token now and then once it is
    /// allowed. Returns the text and whether the grammar completed.
    fn walk(guided: &mut GuidedText, rng: &mut ChaCha8Rng, max: usize) -> (String, bool) {
        let mut bytes = Vec::new();
        for _ in 0..max {
            if guided.is_complete() {
                return (String::from_utf8(bytes).unwrap(), true);
            }
            let allowed: Vec<u32> = guided.mask().unwrap().iter().collect();
            assert!(!allowed.is_empty());
            if allowed.contains(&256) && (allowed.len() == 1 || rng.random::<f64>() < 0.3) {
                return (String::from_utf8(bytes).unwrap(), true);
            }
            let choices: Vec<u32> = allowed.into_iter().filter(|&t| t != 256).collect();
            let token = choices[rng.random_range(0..choices.len())];
            bytes.push(token as u8);
            guided.consume(token).unwrap();
        }
        (String::from_utf8_lossy(&bytes).into_owned(), false)
    }

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "lookup", "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "maxLength": 6},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20},
                    "mode": {"enum": ["fast", "exact \"quoted\""]},
                    "filters": {"type": "object", "properties": {"lang": {"const": "fr"}}, "required": ["lang"], "additionalProperties": false}
                },
                "required": ["query", "mode"],
                "additionalProperties": false
            }}}),
            json!({"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}}),
            json!({"function": {"name": "code", "parameters": {"type": "object", "properties": {
                "id": {"type": "string", "pattern": "^[a-f0-9]{3}$"},
                "ref": {"$ref": "#/$defs/point"}
            }, "required": ["id", "ref"], "additionalProperties": false, "$defs": {"point": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 2}}}}}),
        ]
    }

    fn check_walks(format: ToolCallFormat, only: Option<&str>) {
        let guide = byte_guide();
        let tools = tools();
        let constraint = Constraint::ToolCalls { tools: tools.clone(), function: only.map(str::to_owned) };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for round in 0..60 {
            let mut guided = guide.compile(&constraint, format).unwrap();
            let (text, complete) = walk(&mut guided, &mut rng, 4000);
            assert!(complete, "round {round}: no end after {text:?}");
            let parsed = crate::tool_calls::parse(&text, Some(&tools));
            assert!(
                !parsed.calls.is_empty() && parsed.content.trim().is_empty(),
                "{format:?}: {text:?} parsed as {parsed:?}"
            );
            for call in parsed.calls {
                if let Some(name) = only {
                    assert_eq!(call.name, name);
                }
                let tool = tools.iter().find(|t| t["function"]["name"] == call.name.as_str()).unwrap();
                let validator = jsonschema::validator_for(&tool["function"]["parameters"]).unwrap();
                assert!(
                    validator.is_valid(&call.arguments),
                    "{format:?}: {} {} from {text:?}",
                    call.name,
                    call.arguments
                );
                seen.insert(call.name);
            }
        }
        assert_eq!(seen.len(), if only.is_some() { 1 } else { 3 }, "every function is reachable: {seen:?}");
    }

    #[test]
    fn random_walks_through_xml_tool_calls_parse_and_validate() {
        check_walks(ToolCallFormat::Xml, None);
        check_walks(ToolCallFormat::Xml, Some("code"));
    }

    #[test]
    fn random_walks_through_json_tool_calls_parse_and_validate() {
        check_walks(ToolCallFormat::Json, None);
        check_walks(ToolCallFormat::Json, Some("lookup"));
    }

    #[test]
    fn xml_string_values_never_hold_a_closing_tag() {
        // The parser ends a value at the first `</parameter>`: the grammar may not put one inside.
        let guide = byte_guide();
        let tools = vec![
            json!({"function": {"name": "say", "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}),
        ];
        let constraint = Constraint::ToolCalls { tools, function: None };
        let after = |text: &[u8]| {
            let mut guided = guide.compile(&constraint, ToolCallFormat::Xml).unwrap();
            for &b in b"<tool_call>\n<function=say>\n<parameter=text>\n".iter().chain(text) {
                guided.consume(b as u32).unwrap();
            }
            guided.mask().unwrap().is_allowed(b'>' as u32)
        };
        assert!(after(b"a\n</parameter"), "the closing tag after a newline");
        assert!(!after(b"a</parameter"), "a closing tag inside the value");
        assert!(!after(b"a</tool_call"), "a call's closing tag inside the value");
        assert!(after(b"a</b"), "other tags are text");
    }

    #[test]
    fn patterns_are_searched_unless_anchored() {
        assert_eq!(unanchored("^ab$"), "(?:ab)");
        assert_eq!(unanchored("ab"), "(?s:.*)(?:ab)(?s:.*)");
        assert_eq!(unanchored("^a/b"), r"(?:a\/b)(?s:.*)");
        assert_eq!(unanchored(r"a\$"), r"(?s:.*)(?:a\$)(?s:.*)");
        assert_eq!(escape_slashes(r"\/x/"), r"\/x\/");
    }
}
