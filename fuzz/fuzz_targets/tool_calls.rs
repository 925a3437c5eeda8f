//! The tool-call parsers (Qwen3.5's XML and Qwen3's JSON blocks): any answer parses, and parsing
//! it streamed in arbitrary pieces gives exactly what parsing it whole gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwenrt::tool_calls::{parse, Segment, ToolCallParser};

fuzz_target!(|data: &[u8]| {
    // The first bytes choose where the streamed pieces end.
    let (cuts, text) = data.split_at(data.len().min(4));
    let Ok(text) = std::str::from_utf8(text) else { return };
    let tools = [serde_json::json!({"type": "function", "function": {"name": "f",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}, "b": {"type": "boolean"}}}}})];
    let whole = parse(text, Some(&tools));

    let mut parser = ToolCallParser::new(Some(&tools));
    let (mut content, mut calls) = (String::new(), Vec::new());
    let mut take = |segments: Vec<Segment>| {
        for segment in segments {
            match segment {
                Segment::Text(t) => content.push_str(&t),
                Segment::Call(call) => calls.push(call),
            }
        }
    };
    let mut rest = text;
    for &cut in cuts {
        let mut at = (cut as usize % 16).min(rest.len());
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        let (piece, tail) = rest.split_at(at);
        take(parser.push(piece));
        rest = tail;
    }
    take(parser.push(rest));
    take(parser.finish());
    assert_eq!(content, whole.content, "streamed text differs from the whole parse");
    assert_eq!(calls, whole.calls, "streamed calls differ from the whole parse");
});
