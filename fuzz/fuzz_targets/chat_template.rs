//! Chat templates render under their step budget and output cap: any source compiles and
//! renders, or fails with an error, in bounded time and memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwenrt::chat::{ChatTemplate, Message, RenderRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(template) = ChatTemplate::new(source) else { return };
    let messages = [Message::system("Be brief."), Message::user("Hi"), Message::assistant("Hello!")];
    let tools = [serde_json::json!({"type": "function", "function": {"name": "f", "parameters": {}}})];
    let mut request = RenderRequest::new(&messages);
    request.add_generation_prompt = true;
    let _ = template.render(&request);
    request.tools = Some(&tools);
    let _ = template.render(&request);
});
