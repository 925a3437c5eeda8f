//! `qwenrt run`: one prompt in (with images or videos for a multimodal model), streamed text out.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use qwenrt::chat::{ContentPart, Message, MessageContent};
use qwenrt::vision::{ImageInput, VideoInput};
use qwenrt::{ChatSession, Event, LanguageModel, SessionOptions};

use crate::gen_args::GenArgs;
use crate::{read_text, Dtype};

#[derive(Args)]
pub struct RunArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json, …) or a hub id
    /// (`Qwen/Qwen3.5-0.8B[@revision]`), downloaded into the Hugging Face cache if need be.
    #[arg(long)]
    model: PathBuf,
    /// The prompt; `-` reads it from stdin. By default it is one user message rendered with the
    /// model's chat template.
    prompt: String,
    /// Tokenize the prompt as is (special tokens such as <|im_start|> are recognised).
    #[arg(long)]
    raw: bool,
    /// Print one JSON object (prompt and generated ids, text, finish reason, timings) instead of
    /// streaming text.
    #[arg(long)]
    json: bool,
    /// A system message before the prompt (not with --raw).
    #[arg(long)]
    system: Option<String>,
    /// An image (PNG, JPEG, WebP, or a GIF's first frame) for a multimodal model; repeatable.
    /// Images go into the user message before the text, in order; with --raw, the text needs
    /// one <|vision_start|><|image_pad|><|vision_end|> per image.
    #[arg(long, value_name = "PATH")]
    image: Vec<PathBuf>,
    /// A video: an animated GIF or a folder of frames (file-name order); repeatable. Videos go
    /// after the images (with --raw: one <|vision_start|><|video_pad|><|vision_end|> each).
    #[arg(long, value_name = "PATH")]
    video: Vec<PathBuf>,
    /// Frame rate of a video given as a folder of frames (a GIF has its own).
    #[arg(long, value_name = "FPS", default_value_t = 2.0)]
    video_fps: f64,
    #[command(flatten)]
    gen: GenArgs,
    /// Weight precision.
    #[arg(long, value_enum, default_value = "int8")]
    dtype: Dtype,
}

pub fn run(args: RunArgs) -> Result<()> {
    let prompt_text = read_text(Some(&args.prompt), None)?;
    if args.raw && args.system.is_some() {
        bail!("--system needs the chat template; it cannot be combined with --raw");
    }
    // Attachments are read before the model is: a bad file fails at once.
    let images = args.image.iter().map(|p| open_image(p)).collect::<Result<Vec<_>>>()?;
    let videos = args.video.iter().map(|p| open_video(p, args.video_fps)).collect::<Result<Vec<_>>>()?;
    let lm = Arc::new(crate::load_lm(&args.model, args.dtype)?);
    if !(images.is_empty() && videos.is_empty()) {
        require_vision(&lm)?;
    }
    let params = args.gen.params(&lm)?;
    let prompt = if args.raw {
        lm.encode_prompt(&prompt_text, &images, &videos)?
    } else {
        let mut messages: Vec<Message> = args.system.iter().map(|s| Message::system(s.as_str())).collect();
        messages.push(Message::user(user_content(&images, &videos, prompt_text)));
        lm.prompt(&messages, true, params.enable_thinking)?
    };

    // One prompt, nothing to reuse: no snapshots.
    let options =
        SessionOptions { prompt_cache_bytes: 0, max_context: None, drafting: params.speculative.is_some() };
    let mut session = ChatSession::with_options(lm.clone(), options);
    let cancel = session.cancel_token();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let dim = std::io::stderr().is_terminal();
    let mut write_error: Option<std::io::Error> = None;
    let reply = session.complete_prompt(&prompt, &params, |event| {
        if args.json || write_error.is_some() {
            return;
        }
        let written = match event {
            Event::Content(text) => out.write_all(text.as_bytes()).and_then(|_| out.flush()),
            // The thought goes to stderr, so that stdout carries only the answer.
            Event::Reasoning(text) if dim => write!(std::io::stderr(), "\x1b[2m{text}\x1b[0m"),
            Event::Reasoning(text) => write!(std::io::stderr(), "{text}"),
            Event::Done(_) | Event::Token(_) => Ok(()),
        };
        if let Err(e) = written {
            // A closed pipe (e.g. `| head`) ends generation instead of wasting compute.
            write_error = Some(e);
            cancel.cancel();
        }
    })?;
    if let Some(e) = write_error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(e.into());
    }

    let usage = &reply.usage;
    let prefill_tokens_per_second = (usage.prompt_tokens - usage.cached_prompt_tokens) as f64
        / usage.time_to_first_token.as_secs_f64().max(1e-9);
    if args.json {
        let json = serde_json::json!({
            "prompt_tokens": prompt.ids(),
            "tokens": reply.tokens,
            "text": reply.content,
            "reasoning": reply.reasoning,
            "finish_reason": reply.finish_reason.as_str(),
            "stop_string": reply.stop_string,
            "timings": {
                "prefill_tokens_per_second": prefill_tokens_per_second,
                "decode_tokens_per_second": usage.decode_tokens_per_second(),
                "prefill_ms": usage.time_to_first_token.as_secs_f64() * 1e3,
                "decode_ms": usage.decode_time.as_secs_f64() * 1e3,
                // Part of decode_ms: computing a constrained answer's token masks.
                "constraint_ms": usage.constraint_time.as_secs_f64() * 1e3,
            },
            "speculation": usage.speculation.as_ref().map(|s| serde_json::json!({
                "steps": s.steps,
                "drafted": s.drafted,
                "accepted": s.accepted,
                "acceptance": s.acceptance(),
                "draft_ms": s.draft_time.as_secs_f64() * 1e3,
                "verify_ms": s.verify_time.as_secs_f64() * 1e3,
            })),
        });
        writeln!(out, "{json}")?;
    } else {
        if !reply.reasoning.is_empty() {
            eprintln!();
        }
        writeln!(out)?;
        let drafts = usage
            .speculation
            .as_ref()
            .map_or(String::new(), |s| format!("; {} of {} drafts kept", s.accepted, s.drafted));
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s{drafts}; finish: {}]",
            usage.prompt_tokens,
            prefill_tokens_per_second,
            usage.completion_tokens,
            usage.decode_tokens_per_second(),
            reply.finish_reason.as_str()
        );
    }
    Ok(())
}

/// Reads an image attachment; the error names the file.
pub fn open_image(path: &Path) -> Result<ImageInput> {
    ImageInput::open(path).with_context(|| format!("cannot use image {}", path.display()))
}

/// Reads a video attachment (a GIF or a folder of frames at `folder_fps`).
pub fn open_video(path: &Path, folder_fps: f64) -> Result<VideoInput> {
    VideoInput::open(path, folder_fps).with_context(|| format!("cannot use video {}", path.display()))
}

/// Fails with the library's reason when the model cannot see (a text-only checkpoint).
pub fn require_vision(lm: &LanguageModel) -> Result<()> {
    lm.vision().map(|_| ()).with_context(|| "images and videos need a multimodal model".to_string())
}

/// A user message: the attachments (images, then videos) before the text.
pub fn user_content(images: &[ImageInput], videos: &[VideoInput], text: String) -> MessageContent {
    if images.is_empty() && videos.is_empty() {
        return MessageContent::Text(text);
    }
    let mut parts: Vec<ContentPart> = images.iter().cloned().map(ContentPart::image).collect();
    parts.extend(videos.iter().cloned().map(ContentPart::video));
    parts.push(ContentPart::text(text));
    MessageContent::Parts(parts)
}
