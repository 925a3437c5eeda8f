//! `qwenrt chat`: an interactive multi-turn conversation on stdin/stdout.
//!
//! Lines are user messages; lines starting with `/` are commands. Answers stream to stdout, the
//! status of each turn (speed, reused prompt tokens) goes to stderr. Works the same with piped
//! stdin, which is how it is tested. `/image PATH` and `/video PATH` attach files to the next
//! message (multimodal models).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use qwenrt::chat::{ContentPart, Message, MessageContent};
use qwenrt::{ChatParams, ChatSession, Event, Reply, SessionOptions};

use crate::gen_args::GenArgs;
use crate::Dtype;

#[derive(Args)]
pub struct ChatArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json, …) or a hub id
    /// (`Qwen/Qwen3.5-0.8B[@revision]`), downloaded into the Hugging Face cache if need be.
    #[arg(long)]
    model: PathBuf,
    /// System message at the start of the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Print the model's reasoning (dimmed on a terminal) instead of hiding it.
    #[arg(long)]
    show_thinking: bool,
    /// Memory for saved conversation states, in MiB (0 turns state reuse off).
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    cache_mib: usize,
    /// Do not prefill the last answer while waiting for the next message.
    #[arg(long)]
    no_prepare: bool,
    /// Weight precision.
    #[arg(long, value_enum, default_value = "int8")]
    dtype: Dtype,
    /// Frame rate of a video attached as a folder of frames (`/video DIR`).
    #[arg(long, value_name = "FPS", default_value_t = 2.0)]
    video_fps: f64,
    #[command(flatten)]
    gen: GenArgs,
}

const HELP: &str = "commands: /reset  /think on|off  /system [TEXT]  /image PATH  /video PATH  /save FILE  /load FILE  /help  /quit
/image and /video attach a file (a video: an animated GIF or a folder of frames) to your next message.
Ctrl-C stops the answer being written; at the prompt it quits.";

/// What the conversation loop keeps besides the session.
struct ChatState {
    params: ChatParams,
    system: Option<String>,
    /// Images and videos for the next user message, in the order attached.
    attachments: Vec<ContentPart>,
    video_fps: f64,
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let lm = Arc::new(crate::load_lm(&args.model, args.dtype)?);
    let params = args.gen.params(&lm)?;
    let options = SessionOptions {
        prompt_cache_bytes: crate::mib_to_bytes(args.cache_mib, "--cache-mib")?,
        max_context: None,
        drafting: params.speculative.is_some(),
    };
    let mut session = ChatSession::with_options(lm, options);
    let mut chat =
        ChatState { params, system: args.system.clone(), attachments: Vec::new(), video_fps: args.video_fps };
    session.set_system(chat.system.as_deref());

    // First Ctrl-C during an answer cancels it; at the prompt it quits.
    let generating = Arc::new(AtomicBool::new(false));
    {
        let generating = generating.clone();
        let cancel = session.cancel_token();
        let installed = ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                cancel.cancel();
            } else {
                std::process::exit(130);
            }
        });
        if let Err(e) = installed {
            eprintln!("warning: Ctrl-C will quit instead of stopping an answer: {e}");
        }
    }

    let interactive = std::io::stdin().is_terminal();
    let dim = std::io::stdout().is_terminal();
    if interactive {
        eprintln!("{HELP}");
    }
    let mut stdin = std::io::stdin().lock();
    let mut turn = 0;
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        // Prefill the last answer as the next turn will render it while the user types.
        let prepare = !args.no_prepare && args.cache_mib > 0;
        let read = std::thread::scope(|scope| {
            let prepared = prepare.then(|| scope.spawn(|| session.prepare(chat.params.enable_thinking)));
            let read = stdin.read_line(&mut line);
            if let Some(handle) = prepared {
                if let Ok(Err(e)) = handle.join() {
                    eprintln!("warning: could not prefill the history: {e}");
                }
            }
            read
        });
        if read.context("reading stdin")? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(command) = line.strip_prefix('/') {
            match run_command(command, &mut session, &mut chat) {
                Ok(Flow::Quit) => break,
                Ok(Flow::Continue) => {}
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        turn += 1;
        let message = user_message(std::mem::take(&mut chat.attachments), line);
        generating.store(true, Ordering::SeqCst);
        let reply = answer(&mut session, message.clone(), &chat.params, args.show_thinking, dim);
        generating.store(false, Ordering::SeqCst);
        match reply {
            Ok(reply) => eprintln!("{}", status(turn, &reply, &session)),
            Err(e) => {
                eprintln!("error: {e:#}");
                // The message was not kept: its attachments wait for the next one.
                if let MessageContent::Parts(mut parts) = message.content {
                    parts.pop();
                    chat.attachments = parts;
                }
            }
        }
    }
    Ok(())
}

/// A user message: the attachments, then the text.
fn user_message(mut attachments: Vec<ContentPart>, text: &str) -> Message {
    if attachments.is_empty() {
        return Message::user(text);
    }
    attachments.push(ContentPart::text(text));
    Message::user(attachments)
}

/// Streams one answer to stdout.
fn answer(
    session: &mut ChatSession,
    message: Message,
    params: &ChatParams,
    show_thinking: bool,
    dim: bool,
) -> Result<Reply> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut in_reasoning = false;
    let mut failed: Option<std::io::Error> = None;
    let cancel = session.cancel_token();
    let reply = session.send(message, params, |event| {
        let written = match event {
            Event::Reasoning(t) if show_thinking => {
                in_reasoning = true;
                if dim {
                    write!(out, "\x1b[2m{t}\x1b[0m")
                } else {
                    write!(out, "{t}")
                }
            }
            Event::Reasoning(_) => Ok(()),
            Event::Content(t) => {
                let sep = if std::mem::take(&mut in_reasoning) { "\n\n" } else { "" };
                write!(out, "{sep}{t}")
            }
            Event::Done(_) => writeln!(out),
            Event::Token(_) => Ok(()),
        };
        if let Err(e) = written.and_then(|_| out.flush()) {
            failed.get_or_insert(e);
            cancel.cancel();
        }
    })?;
    if let Some(e) = failed {
        return Err(e).context("writing the answer");
    }
    Ok(reply)
}

fn status(turn: usize, reply: &Reply, session: &ChatSession) -> String {
    let u = &reply.usage;
    let stats = session.stats();
    let mut s = format!(
        "[turn {turn}: {} prompt tokens ({} cached), {} generated",
        u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens
    );
    if u.reasoning_tokens > 0 {
        s += &format!(" ({} reasoning)", u.reasoning_tokens);
    }
    s += &format!(
        ", {:.1} tok/s, first token {:.0} ms, finish: {} | cache: {} hits in {} turns, {} states, {:.1} MiB]",
        u.decode_tokens_per_second(),
        u.time_to_first_token.as_secs_f64() * 1e3,
        reply.finish_reason.as_str(),
        stats.hits,
        stats.lookups,
        session.prompt_cache().len(),
        session.prompt_cache().bytes() as f64 / (1 << 20) as f64
    );
    s
}

enum Flow {
    Continue,
    Quit,
}

fn run_command(command: &str, session: &mut ChatSession, chat: &mut ChatState) -> Result<Flow> {
    let (name, arg) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
    let arg = arg.trim();
    let ChatState { params, system, attachments, video_fps } = chat;
    match name {
        "quit" | "exit" => return Ok(Flow::Quit),
        "help" => eprintln!("{HELP}"),
        "reset" => {
            session.reset();
            session.set_system(system.as_deref());
            attachments.clear();
            eprintln!("[conversation cleared]");
        }
        "image" => {
            let path = file_arg(arg, "/image PATH")?;
            crate::run::require_vision(session.model())?;
            let image = crate::run::open_image(path)?;
            eprintln!(
                "[image {} ({}x{}) attached to your next message]",
                path.display(),
                image.width(),
                image.height()
            );
            attachments.push(ContentPart::image(image));
        }
        "video" => {
            let path = file_arg(arg, "/video PATH")?;
            crate::run::require_vision(session.model())?;
            let video = crate::run::open_video(path, *video_fps)?;
            eprintln!(
                "[video {} ({} frames) attached to your next message]",
                path.display(),
                video.video().frames.len()
            );
            attachments.push(ContentPart::video(video));
        }
        "think" => {
            params.enable_thinking = match arg {
                "on" => Some(true),
                "off" => Some(false),
                _ => bail!("usage: /think on|off"),
            };
            eprintln!("[thinking {arg}]");
        }
        "system" => {
            *system = (!arg.is_empty()).then(|| arg.to_owned());
            session.set_system(system.as_deref());
            eprintln!("[system message {}]", if arg.is_empty() { "removed" } else { "set" });
        }
        "save" => {
            let path = file_arg(arg, "/save FILE")?;
            let json = serde_json::to_string_pretty(session.messages())?;
            std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
            eprintln!("[saved {} messages to {}]", session.messages().len(), path.display());
        }
        "load" => {
            let path = file_arg(arg, "/load FILE")?;
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let messages: Vec<Message> = serde_json::from_str(&text)
                .with_context(|| format!("{}: expected a JSON list of messages", path.display()))?;
            let messages = open_saved_attachments(messages, *video_fps)
                .with_context(|| format!("loading {}", path.display()))?;
            *system = messages.first().filter(|m| m.role == "system").and_then(|m| match &m.content {
                qwenrt::chat::MessageContent::Text(t) => Some(t.clone()),
                _ => None,
            });
            eprintln!("[loaded {} messages from {}]", messages.len(), path.display());
            session.set_messages(messages);
        }
        _ => bail!("unknown command /{name}; /help lists them"),
    }
    Ok(Flow::Continue)
}

fn file_arg<'a>(arg: &'a str, usage: &str) -> Result<&'a Path> {
    if arg.is_empty() {
        bail!("usage: {usage}");
    }
    Ok(Path::new(arg))
}

/// `/save` writes an attachment read from a file as `{"type": "image", "image": PATH}` (or
/// `video`); reading the conversation back opens those files again. Other image or video parts
/// (e.g. an OpenAI `image_url`) are left as they are and refused when the conversation is sent.
fn open_saved_attachments(messages: Vec<Message>, video_fps: f64) -> Result<Vec<Message>> {
    messages
        .into_iter()
        .map(|mut message| {
            if let MessageContent::Parts(parts) = &mut message.content {
                for part in parts.iter_mut() {
                    let ContentPart::Other(raw) = part else { continue };
                    let kind = raw.get("type").and_then(|t| t.as_str());
                    match (kind, raw.get("image"), raw.get("video")) {
                        (Some("image"), Some(serde_json::Value::String(path)), _) => {
                            *part = ContentPart::image(crate::run::open_image(Path::new(path))?);
                        }
                        (Some("video"), _, Some(serde_json::Value::String(path))) => {
                            *part = ContentPart::video(crate::run::open_video(Path::new(path), video_fps)?);
                        }
                        _ => {}
                    }
                }
            }
            Ok(message)
        })
        .collect()
}
