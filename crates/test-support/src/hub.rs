//! A stand-in for the Hugging Face hub: an HTTP server on 127.0.0.1 serving fixture folders under
//! the hub's routes, so that downloads are tested without the internet.
//!
//! - `GET /api/models/{owner}/{name}/revision/{revision}[?blobs=true]`: `{sha, siblings}`, the
//!   listing with file sizes, and `…/tree/{revision}`, the file tree in one page;
//! - `GET|HEAD /{owner}/{name}/resolve/{revision}/{file}`: the file, with `ETag`,
//!   `X-Repo-Commit`, `Content-Length` and single byte ranges (`206`, `Content-Range`).
//!
//! Errors carry `X-Error-Code` as the hub sends it: `RepoNotFound`, `RevisionNotFound`,
//! `EntryNotFound`, `GatedRepo` (401 without a token, 403 with a wrong one). Requests are counted
//! per route so that tests can prove what was and was not downloaded, and one file can be made to
//! break its connection half-way.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One commit of a repository: its files and the branches or tags that point at it.
pub struct Commit {
    pub sha: String,
    pub refs: Vec<String>,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Commit {
    /// The regular files of `dir` and its subfolders; `salt` makes the commit id unique.
    pub fn from_dir(dir: &Path, refs: &[&str], salt: &str) -> Commit {
        let mut files = BTreeMap::new();
        collect(dir, "", &mut files);
        let mut hash = fnv(salt.as_bytes());
        for (name, bytes) in &files {
            hash = fnv_more(hash, name.as_bytes());
            hash = fnv_more(hash, bytes);
        }
        Commit {
            sha: format!("{hash:016x}{:024x}", fnv(&hash.to_le_bytes())),
            refs: refs.iter().map(|r| r.to_string()).collect(),
            files,
        }
    }
}

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.file_type().unwrap().is_dir() {
            collect(&entry.path(), &relative, out);
        } else {
            out.insert(relative, std::fs::read(entry.path()).unwrap());
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    fnv_more(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv_more(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

#[derive(Default)]
struct Repo {
    commits: Vec<Commit>,
    /// The token a gated repository wants.
    token: Option<String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    /// `(repo, file)` → for each coming download of it, the bytes after which the connection breaks.
    cuts: HashMap<(String, String), std::collections::VecDeque<usize>>,
    /// `(repo, file)` → the size the listing claims instead of the true one.
    false_sizes: HashMap<(String, String), u64>,
    /// Requests seen: `"listing repo"`, `"get repo file bytes=…"`, `"head repo file"`.
    log: Vec<String>,
}

/// A running stand-in hub; it stops when the test process ends.
#[derive(Clone)]
pub struct StandInHub {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl StandInHub {
    pub fn start() -> StandInHub {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app =
                    axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
                        let state = shared.clone();
                        async move { serve(&state, &method, &uri, &headers) }
                    });
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr: SocketAddr = rx.recv().unwrap();
        StandInHub { url: format!("http://{addr}"), state }
    }

    /// Publishes `repo` (`owner/name`) with its commits, oldest first.
    pub fn add_repo(&self, repo: &str, commits: Vec<Commit>) {
        self.state.lock().unwrap().repos.insert(repo.to_owned(), Repo { commits, token: None });
    }

    /// Makes `repo` gated: files (not the listing) need `Authorization: Bearer {token}`.
    pub fn gate(&self, repo: &str, token: &str) {
        self.state.lock().unwrap().repos.get_mut(repo).unwrap().token = Some(token.to_owned());
    }

    /// The next download of `file` not yet cut sends `after` bytes, then drops the connection.
    /// (The one-byte probe `Range: bytes=0-0` is not a download.)
    pub fn cut_next_download(&self, repo: &str, file: &str, after: usize) {
        self.state
            .lock()
            .unwrap()
            .cuts
            .entry((repo.to_owned(), file.to_owned()))
            .or_default()
            .push_back(after);
    }

    /// The listing claims `size` bytes for `file`.
    pub fn misreport_size(&self, repo: &str, file: &str, size: u64) {
        self.state.lock().unwrap().false_sizes.insert((repo.to_owned(), file.to_owned()), size);
    }

    /// The requests seen so far, and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (status, format!("{{\"error\":\"{message}\"}}")).into_response();
    response.headers_mut().insert("x-error-code", code.parse().unwrap());
    response
}

fn serve(state: &Mutex<State>, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    // Split before decoding: a revision such as `refs/pr/1` comes as one `refs%2Fpr%2F1` segment.
    let path = uri.path();
    let mut state = state.lock().unwrap();
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let parts: Vec<String> = rest.splitn(4, '/').map(percent_decode).collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let [owner, name, route @ ("revision" | "tree"), revision] = parts[..] else {
            return error(StatusCode::NOT_FOUND, "EntryNotFound", "no such route");
        };
        let repo_id = format!("{owner}/{name}");
        state.log.push(format!("listing {repo_id}"));
        let Some(repo) = state.repos.get(&repo_id) else {
            return error(StatusCode::NOT_FOUND, "RepoNotFound", "Repository not found");
        };
        let Some(commit) = find_commit(repo, revision) else {
            return error(StatusCode::NOT_FOUND, "RevisionNotFound", "Invalid rev id");
        };
        let siblings: Vec<serde_json::Value> = commit
            .files
            .iter()
            .map(|(file, bytes)| {
                let size = state
                    .false_sizes
                    .get(&(repo_id.clone(), file.clone()))
                    .copied()
                    .unwrap_or(bytes.len() as u64);
                serde_json::json!({"rfilename": file, "size": size})
            })
            .collect();
        if route == "tree" {
            // The recursive tree, one page: what `snapshot_download` lists files with.
            let entries: Vec<serde_json::Value> = commit
                .files
                .iter()
                .map(|(file, bytes)| {
                    serde_json::json!({"type": "file", "oid": format!("{:040x}", fnv(bytes) as u128), "size": bytes.len(), "path": file})
                })
                .collect();
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                serde_json::Value::from(entries).to_string(),
            )
                .into_response();
        }
        let body = serde_json::json!({"id": repo_id, "sha": commit.sha, "siblings": siblings});
        return (StatusCode::OK, [("content-type", "application/json")], body.to_string()).into_response();
    }

    let parts: Vec<String> = path.trim_start_matches('/').splitn(5, '/').map(percent_decode).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let [owner, name, "resolve", revision, file] = parts[..] else {
        return error(StatusCode::NOT_FOUND, "EntryNotFound", "no such route");
    };
    let repo_id = format!("{owner}/{name}");
    let range = headers.get("range").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let verb = if method == Method::HEAD { "head" } else { "get" };
    state.log.push(format!("{verb} {repo_id} {file} {}", range.as_deref().unwrap_or("whole")));
    let Some(repo) = state.repos.get(&repo_id) else {
        return error(StatusCode::UNAUTHORIZED, "RepoNotFound", "Repository not found");
    };
    if let Some(token) = &repo.token {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            None => {
                return error(StatusCode::UNAUTHORIZED, "GatedRepo", "Access to this model is restricted")
            }
            Some(given) if given != format!("Bearer {token}") => {
                return error(StatusCode::FORBIDDEN, "GatedRepo", "Access to this model is restricted")
            }
            Some(_) => {}
        }
    }
    let Some(commit) = find_commit(repo, revision) else {
        return error(StatusCode::NOT_FOUND, "RevisionNotFound", "Invalid rev id");
    };
    let Some(bytes) = commit.files.get(file) else {
        return error(StatusCode::NOT_FOUND, "EntryNotFound", "Entry not found");
    };
    let bytes = Bytes::from(bytes.clone());
    let etag = format!("\"{:016x}\"", fnv(&bytes));
    let sha = commit.sha.clone();
    let total = bytes.len();
    let (status, body, content_range) = match range.as_deref().map(|r| parse_range(r, total)) {
        Some(None) => return error(StatusCode::RANGE_NOT_SATISFIABLE, "RangeNotSatisfiable", "bad range"),
        Some(Some((start, end))) => (
            StatusCode::PARTIAL_CONTENT,
            bytes.slice(start..end),
            Some(format!("bytes {start}-{}/{total}", end - 1)),
        ),
        None => (StatusCode::OK, bytes, None),
    };
    let length = body.len();
    let probe = range.as_deref() == Some("bytes=0-0");
    let cut = match state.cuts.get_mut(&(repo_id, file.to_owned())) {
        Some(cuts) if method == Method::GET && !probe => cuts.pop_front(),
        _ => None,
    };
    let body = match cut {
        Some(after) if after < length => {
            let first = body.slice(..after);
            Body::from_stream(futures_util::stream::iter([
                Ok(first),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut by the test")),
            ]))
        }
        _ if method == Method::HEAD => Body::empty(),
        _ => Body::from(body),
    };
    let mut response = Response::builder()
        .status(status)
        .header("etag", etag)
        .header("x-repo-commit", sha)
        .header("accept-ranges", "bytes")
        .header("content-length", length);
    if let Some(content_range) = content_range {
        response = response.header("content-range", content_range);
    }
    response.body(body).unwrap()
}

/// A branch or tag name, or a commit id.
fn find_commit<'a>(repo: &'a Repo, revision: &str) -> Option<&'a Commit> {
    repo.commits.iter().rev().find(|c| c.sha == revision || c.refs.iter().any(|r| r == revision))
}

/// `bytes=a-b` or `bytes=a-`, within a file of `total` bytes: `[start, end)`.
fn parse_range(range: &str, total: usize) -> Option<(usize, usize)> {
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = start.parse().ok()?;
    let end: usize = if end.is_empty() { total } else { end.parse::<usize>().ok()? + 1 };
    (start < end && end <= total).then_some((start, end))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
