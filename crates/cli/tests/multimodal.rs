//! `qwenrt run --image/--video` and the chat command `/image` on tiny-vl: the raw fixture prompt
//! reproduces transformers' expanded ids and greedy tokens, the chat-template path puts the
//! attachments before the text, and bad files or a text-only model give clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{model_folder, qwenrt_output, root, temp_dir};
use qwenrt::chat::{ContentPart, Message};
use qwenrt::vision::ImageInput;
use qwenrt::{LanguageModel, Logits};
use safetensors::SafeTensors;

fn vision_fixtures() -> PathBuf {
    root().join("fixtures/vision")
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn reference_ids(name: &str) -> Vec<u32> {
    let bytes = std::fs::read(vision_fixtures().join("prompt.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let data = st.tensor(name).unwrap().data().to_vec();
    data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

/// The photo as transformers decoded and resized it (JPEG decoders round differently), saved as
/// a PNG, which decodes losslessly.
fn photo_as_png(dir: &Path) -> PathBuf {
    let bytes = std::fs::read(vision_fixtures().join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("image1.resized").unwrap();
    let (h, w) = (view.shape()[0], view.shape()[1]);
    let path = dir.join("b_photo_resized.png");
    std::fs::write(&path, png_rgb(w, h, view.data())).unwrap();
    path
}

/// A minimal RGB PNG: unfiltered rows in stored (uncompressed) deflate blocks.
fn png_rgb(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::with_capacity(height * (1 + 3 * width));
    for row in rgb.chunks_exact(3 * width) {
        raw.push(0); // filter type None
        raw.extend_from_slice(row);
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        zlib.extend((block.len() as u16).to_le_bytes());
        zlib.extend((!(block.len() as u16)).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + byte as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend(((b << 16) | a).to_be_bytes());
    let mut ihdr = Vec::new();
    ihdr.extend((width as u32).to_be_bytes());
    ihdr.extend((height as u32).to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter choice, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

const GREEDY_F32: [&str; 6] = ["--dtype", "f32", "--temperature", "0", "--json", "--max-tokens"];

/// The fixture's two-turn prompt, written out raw, with its three images and the video.
#[test]
fn run_raw_with_images_and_a_video_reproduces_transformers() {
    let dir = model_folder();
    let work = temp_dir("mm-raw");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vision_fixtures().join("expected.json")).unwrap())
            .unwrap();
    let text = meta["prompt"]["text"].as_str().unwrap();
    let photo = photo_as_png(&work);
    let (a, c, v) = (
        vision_fixtures().join("a_small.png"),
        vision_fixtures().join("c_tall.png"),
        vision_fixtures().join("v_clip.gif"),
    );
    let mut args = vec!["run", "--model", arg(&dir)];
    args.extend(GREEDY_F32);
    args.extend(["8", "--raw", "--image", arg(&a), "--image", arg(&photo), "--image", arg(&c)]);
    args.extend(["--video", arg(&v), text]);
    let json = ok_json(&qwenrt_output(&args, ""));
    assert_eq!(ids(&json["prompt_tokens"]), reference_ids("prompt.expanded_ids"));
    assert_eq!(ids(&json["tokens"]), reference_ids("prompt.greedy"));
}

/// Without --raw the images go into the user message, before the text, and the answer is the
/// library's.
#[test]
fn run_image_flags_put_the_pictures_before_the_text() {
    let dir = model_folder();
    let (a, c) = (vision_fixtures().join("a_small.png"), vision_fixtures().join("c_tall.png"));
    let mut args = vec!["run", "--model", arg(&dir)];
    args.extend(GREEDY_F32);
    args.extend(["5", "--image", arg(&a), "--image", arg(&c), "What do you see?"]);
    let json = ok_json(&qwenrt_output(&args, ""));

    let lm = LanguageModel::load(&dir).unwrap();
    let parts = vec![
        ContentPart::image(ImageInput::open(&a).unwrap()),
        ContentPart::image(ImageInput::open(&c).unwrap()),
        ContentPart::text("What do you see?"),
    ];
    let prompt = lm.prompt(&[Message::user(parts)], true, None).unwrap();
    assert_eq!(ids(&json["prompt_tokens"]), prompt.ids());
    assert_eq!(prompt.media_counts(), (2, 0));

    let mut state = lm.model.new_state();
    let encoded = lm.vision().unwrap().encode(&prompt, 0).unwrap();
    let piece = prompt.piece(&encoded, 0..prompt.len()).unwrap();
    let mut logits = lm.model.forward_embedded(&mut state, &piece.input(), Logits::Last).unwrap().to_vec();
    let mut want = Vec::new();
    for _ in 0..5 {
        let mut next = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[next] {
                next = i;
            }
        }
        let next = next as u32;
        want.push(next);
        if lm.stop_ids().contains(&next) {
            break;
        }
        logits = lm.model.forward(&mut state, &[next], Logits::Last).unwrap().to_vec();
    }
    assert_eq!(ids(&json["tokens"]), want);
}

#[test]
fn chat_attaches_images_to_the_next_message() {
    let dir = model_folder();
    let image = vision_fixtures().join("a_small.png");
    let script = format!(
        "/image {}\n/image {}\nWhat is in this picture?\nAnd its colours?\n",
        vision_fixtures().join("missing.png").display(),
        image.display()
    );
    let args = ["chat", "--model", arg(&dir), "--dtype", "f32", "--temperature", "0", "--max-tokens", "4"];
    let out = qwenrt_output(&args, &script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("error: cannot use image") && stderr.contains("missing.png"), "{stderr}");
    assert!(stderr.contains("(40x30) attached to your next message"), "{stderr}");
    let turns: Vec<(usize, usize)> = stderr
        .lines()
        .filter(|l| l.starts_with("[turn "))
        .map(|l| {
            let after = |key: &str| l.split(key).nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            (after(": "), after("tokens ("))
        })
        .collect();
    assert_eq!(turns.len(), 2, "{stderr}");
    // The 40x30 image becomes 70 tokens; the second turn reuses them.
    let text_only = "<|im_start|>user\nWhat is in this picture?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
    let lm = LanguageModel::load(&dir).unwrap();
    // <|vision_start|>, 70 <|image_pad|>, <|vision_end|>
    assert_eq!(turns[0].0, lm.encode(text_only).unwrap().len() + 72, "{stderr}");
    let image_end = lm.encode("<|im_start|>user\n").unwrap().len() + 72;
    assert!(turns[1].1 > image_end, "{stderr}");
}

#[test]
fn bad_attachments_and_text_only_models_are_clear_errors() {
    let dir = model_folder();
    let missing = vision_fixtures().join("no-such-file.png");
    let out = qwenrt_output(&["run", "--model", arg(&dir), "--image", arg(&missing), "Hi"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot use image") && stderr.contains("no-such-file.png"), "{stderr}");

    let not_an_image = vision_fixtures().join("README.md");
    let out = qwenrt_output(&["run", "--model", arg(&dir), "--image", arg(&not_an_image), "Hi"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not a PNG, JPEG, WebP or GIF"), "{stderr}");

    // tiny-vl without its vision_config: a text-only model.
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json.as_object_mut().unwrap().remove("vision_config");
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let image = vision_fixtures().join("a_small.png");
    let out = qwenrt_output(&["run", "--model", arg(&dir), "--image", arg(&image), "Hi"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("need a multimodal model") && stderr.contains("no vision tower"), "{stderr}");
    let out = qwenrt_output(&["chat", "--model", arg(&dir)], &format!("/image {}\n", image.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no vision tower"), "{stderr}");
}

/// A running `qwenrt serve`; killed when dropped.
struct Server {
    child: std::process::Child,
    address: String,
}

impl Server {
    fn start(model: &Path, extra_args: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qwenrt"))
            .args(["serve", "--model", arg(model), "--port", "0", "--dtype", "f32"])
            .args(extra_args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut first_line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
        let address = first_line.trim().strip_prefix("listening on http://").unwrap().to_owned();
        Server { child, address }
    }

    /// POSTs a chat completion; returns the status and the JSON body.
    fn chat(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.address).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        let body = body.to_string();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image_request(url: &str) -> serde_json::Value {
    serde_json::json!({
        "model": "tiny",
        "temperature": 0,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "What is in this picture?"},
        ]}],
    })
}

/// `image_url` parts: `data:` URLs always, local files only with `--allow-local-files`, remote
/// URLs never.
#[test]
fn serve_reads_data_urls_and_local_files_only_when_allowed() {
    use base64::Engine as _;
    let dir = model_folder();
    let image = vision_fixtures().join("a_small.png");
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&image).unwrap())
    );
    let file_url = format!("file://{}", image.display().to_string().replace('%', "%25").replace(' ', "%20"));

    // What the library answers.
    let lm = LanguageModel::load(&dir).unwrap();
    let parts = vec![
        ContentPart::image(ImageInput::open(&image).unwrap()),
        ContentPart::text("What is in this picture?"),
    ];
    let prompt = lm.prompt(&[Message::user(parts)], true, None).unwrap();
    let mut state = lm.model.new_state();
    let encoded = lm.vision().unwrap().encode(&prompt, 0).unwrap();
    let piece = prompt.piece(&encoded, 0..prompt.len()).unwrap();
    let mut logits = lm.model.forward_embedded(&mut state, &piece.input(), Logits::Last).unwrap().to_vec();
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let next =
            (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best }) as u32;
        if lm.stop_ids().contains(&next) {
            break;
        }
        tokens.push(next);
        logits = lm.model.forward(&mut state, &[next], Logits::Last).unwrap().to_vec();
    }
    let want = lm.tokenizer.decode(&tokens).unwrap();

    let closed = Server::start(&dir, &[]);
    let (status, body) = closed.chat(&image_request(&data_url));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len(), "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], want.as_str(), "{body}");
    for (url, expected) in [
        (file_url.as_str(), "--allow-local-files"),
        (image.to_str().unwrap(), "--allow-local-files"),
        ("https://example.com/cat.png", "not fetched"),
        ("data:image/png;base64,AAAA", "not a PNG"),
    ] {
        let (status, body) = closed.chat(&image_request(url));
        assert_eq!(status, 400, "{url}: {body}");
        let error = &body["error"];
        assert!(error["message"].as_str().unwrap().contains(expected), "{url}: {body}");
        assert_eq!(error["param"], "messages[0].content[0]", "{body}");
    }

    let open = Server::start(&dir, &["--allow-local-files"]);
    for url in [file_url.as_str(), image.to_str().unwrap(), data_url.as_str()] {
        let (status, body) = open.chat(&image_request(url));
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], want.as_str(), "{url}: {body}");
    }
    let missing = vision_fixtures().join("nowhere.png");
    let (status, body) = open.chat(&image_request(missing.to_str().unwrap()));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("nowhere.png"), "{body}");
}

/// One request's pictures share a pixel budget (`--max-media-mpx`): a picture whose header says
/// it would pass what is left is refused before it is decoded, naming the limit.
#[test]
fn serve_caps_the_pixels_of_one_request() {
    use base64::Engine as _;
    let mut png = Vec::new();
    image::RgbImage::from_pixel(800, 800, image::Rgb([200, 30, 30]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&png));
    let part = serde_json::json!({"type": "image_url", "image_url": {"url": url}});
    let request = |images: usize| {
        let mut content = vec![part.clone(); images];
        content.push(serde_json::json!({"type": "text", "text": "Compare."}));
        serde_json::json!({"messages": [{"role": "user", "content": content}], "max_tokens": 1})
    };
    let dir = model_folder();
    // 1 Mpx: one 800×800 picture (0.61 Mpx) fits, a second does not.
    let server = Server::start(&dir, &["--max-media-mpx", "1"]);
    let (status, body) = server.chat(&request(1));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.chat(&request(2));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "messages[0].content[1]", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--max-media-mpx"), "{body}");
}
