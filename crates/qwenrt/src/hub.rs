//! Models named by their Hugging Face hub id, resolved to a folder of the standard hub cache.
//!
//! `Qwen/Qwen3.5-0.8B`, `Qwen/Qwen3.5-0.8B@<branch, tag or commit>` and, for repositories of GGUF
//! files, `user/repo:Q4_K_M` (llama.cpp's spelling) each name a snapshot of a repository. The
//! cache is the one the Python `huggingface_hub` library writes and reads:
//!
//! ```text
//! $HF_HUB_CACHE/models--{owner}--{name}/
//!     blobs/{etag}                  file contents, one per distinct file
//!     refs/{revision}               the commit a branch or tag pointed at when last resolved
//!     snapshots/{commit}/{file}     relative symlinks into blobs/: the folder a model loads from
//! ```
//!
//! so a model that transformers downloaded loads without a second download, and the reverse.
//!
//! Downloads go through the `hf-hub` crate: one lock per blob (a second process waits, and the
//! lock dies with its holder), a `.part` file resumed with a range request after a cut, and the
//! blob renamed into place only when whole, so a reader never sees half a file. This module adds
//! what the Python library does and the crate does not: `HF_TOKEN`, `HF_HUB_CACHE` and
//! `HF_HUB_OFFLINE`; choosing only the files the runtime reads; sizes checked against the hub's
//! listing; free disk space checked before the first byte; and errors that say what to do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use serde::Deserialize;

/// Files a model folder may have besides its weights, downloaded when the repository has them.
const SMALL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    // sentence-transformers
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
];

const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Attempts per file after the first: a cut connection resumes from the bytes already on disk.
/// (`hf-hub`'s own retries are off: after its last retry it reports a failure even when that
/// retry succeeded, and it cannot recover a part file that is already whole.)
const RETRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "`{0}`: no such model folder, and not a hub id (owner/name, owner/name@revision or owner/name:QUANT)"
    )]
    NotAnId(String),

    #[error("{repo}: no such repository on {endpoint} (a private one needs HF_TOKEN)")]
    RepoNotFound { repo: String, endpoint: String },

    #[error("{repo}: no revision `{revision}` (a branch, tag or commit) on {endpoint}")]
    RevisionNotFound { repo: String, revision: String, endpoint: String },

    #[error(
        "{repo} is gated or private and no token was given: accept its terms at {endpoint}/{repo}, \
         then set HF_TOKEN to a token that can read it (or log in with `hf auth login`)"
    )]
    NeedsToken { repo: String, endpoint: String },

    #[error(
        "{repo}: the hub refused the token ({status}): accept the model's terms at {endpoint}/{repo} \
         with the account the token belongs to, or use another token"
    )]
    Forbidden { repo: String, endpoint: String, status: u16 },

    #[error(
        "cannot reach {endpoint} ({detail}). Check the network; set HF_ENDPOINT to use a mirror, or \
         HF_HUB_OFFLINE=1 to use only what is already in {}",
        cache.display()
    )]
    Network { endpoint: String, detail: String, cache: PathBuf },

    #[error("{id} is not in the cache {} ({what}){hint}", cache.display())]
    NotCached { id: String, what: String, cache: PathBuf, hint: &'static str },

    #[error(
        "not enough disk space for {id} in {}: {needed} MiB more are needed, {free} MiB are free",
        dir.display()
    )]
    DiskFull { id: String, dir: PathBuf, needed: u64, free: u64 },

    #[error("{repo}: {file} has {found} bytes after the download, the hub lists {expected}; it was removed: run again")]
    SizeMismatch { repo: String, file: String, found: u64, expected: u64 },

    #[error("{repo}: {message}")]
    Repository { repo: String, message: String },

    #[error("{repo}: {file}: {message}")]
    Download { repo: String, file: String, message: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// A repository on the hub, at a revision, optionally narrowed to one GGUF quantization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    /// `owner/name`.
    pub repo: String,
    /// A branch, tag or commit; `None` is the default branch, `main`.
    pub revision: Option<String>,
    /// A GGUF quantization such as `Q4_K_M`, matched against the repository's `.gguf` files.
    pub quant: Option<String>,
}

impl HubId {
    /// Parses `owner/name[@revision][:QUANT]`; `None` where `spec` is not of that form.
    pub fn parse(spec: &str) -> Option<HubId> {
        let (rest, quant) = match spec.rsplit_once(':') {
            Some((rest, quant)) if is_name(quant) => (rest, Some(quant.to_owned())),
            Some(_) => return None,
            None => (spec, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, revision)) if is_revision(revision) => (repo, Some(revision.to_owned())),
            Some(_) => return None,
            None => (rest, None),
        };
        let (owner, name) = repo.split_once('/')?;
        (is_name(owner) && is_name(name)).then(|| HubId { repo: repo.to_owned(), revision, quant })
    }

    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(revision) = &self.revision {
            write!(f, "@{revision}")?;
        }
        if let Some(quant) = &self.quant {
            write!(f, ":{quant}")?;
        }
        Ok(())
    }
}

/// The hub's rule for owner and repository names, minus what would escape a path.
fn is_name(s: &str) -> bool {
    (1..=96).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("..")
}

/// A git ref name or a commit: no spaces, control characters or `..`, nothing that escapes
/// `refs/` in the cache.
fn is_revision(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_graphic() && !b"\\:~^?*[".contains(&b))
        && !s.starts_with(['/', '.'])
        && !s.ends_with('/')
        && !s.contains("..")
        && !s.contains("//")
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where the hub is and how to talk to it, read from the environment as `huggingface_hub`
/// reads it.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `HF_TOKEN`, else the file `HF_TOKEN_PATH` or `$HF_HOME/token` that `hf auth login` writes.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: only the cache, never the network.
    pub offline: bool,
    /// Progress bars on stderr while downloading (drawn only on a terminal).
    pub progress: bool,
}

impl HubSettings {
    pub fn from_env() -> HubSettings {
        Self::from_vars(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubSettings {
        let home = || PathBuf::from(var("HOME").unwrap_or_else(|| ".".into()));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home().join(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let truthy =
            |key| var(key).is_some_and(|v| ["1", "on", "yes", "true"].contains(&v.to_lowercase().as_str()));
        HubSettings {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .into(),
            cache_dir,
            token,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            progress: true,
        }
    }
}

/// A model folder given as a path, or else a hub id resolved (and downloaded if need be) with
/// the settings of the environment.
pub fn locate(spec: &str) -> Result<PathBuf, HubError> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_owned());
    }
    let id = HubId::parse(spec).ok_or_else(|| HubError::NotAnId(spec.to_owned()))?;
    match Hub::new(HubSettings::from_env())?.resolve(&id) {
        Ok(resolved) => Ok(resolved.path),
        // `models/qwen` may have been meant as a path.
        Err(HubError::RepoNotFound { repo, endpoint }) => Err(HubError::Repository {
            repo,
            message: format!("no folder of that name here, and no such repository on {endpoint} (a private one needs HF_TOKEN)"),
        }),
        Err(e) => Err(e),
    }
}

/// What a hub id resolved to.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The snapshot folder for a safetensors repository, the (first) GGUF file for a quant.
    pub path: PathBuf,
    pub commit: String,
    /// Files of the snapshot that the runtime reads, relative to its folder.
    pub files: Vec<String>,
}

/// The listing `GET /api/models/{repo}/revision/{revision}?blobs=true` returns.
#[derive(Deserialize)]
struct Listing {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
}

pub struct Hub {
    settings: HubSettings,
    api: Api,
}

impl Hub {
    pub fn new(settings: HubSettings) -> Result<Hub, HubError> {
        let api = ApiBuilder::new()
            .with_endpoint(settings.endpoint.clone())
            .with_cache_dir(settings.cache_dir.clone())
            .with_token(settings.token.clone())
            .with_progress(settings.progress)
            .with_retries(0)
            .with_user_agent("qwenrt", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Client(e.to_string()))?;
        Ok(Hub { settings, api })
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The folder (or GGUF file) of `id`, downloading what the cache lacks. Offline, or when the
    /// hub cannot be reached, a complete snapshot in the cache is used as it is.
    pub fn resolve(&self, id: &HubId) -> Result<Resolved, HubError> {
        if self.settings.offline {
            return self.resolve_cached(id, " (HF_HUB_OFFLINE is set: unset it to download)");
        }
        let listing = match self.listing(id) {
            Ok(listing) => listing,
            Err(network @ HubError::Network { .. }) => {
                return self.resolve_cached(id, "").map_err(|_| network)
            }
            Err(e) => return Err(e),
        };
        let names: BTreeSet<&str> = listing.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        let size_of = |file: &str| listing.siblings.iter().find(|s| s.rfilename == file).and_then(|s| s.size);
        let snapshot = self.repo_dir(&id.repo).join("snapshots").join(&listing.sha);

        let mut files = match &id.quant {
            Some(quant) => gguf_files(id, names.iter().copied(), quant)?,
            None => {
                let mut fetch = |file: &str| self.fetch(id, &snapshot, file, size_of(file));
                let mut files = self.first_files(id, &names, &mut fetch)?;
                files.extend(self.weight_files(id, &names, &mut fetch)?);
                files
            }
        };
        files.sort();
        files.dedup();

        let missing: u64 =
            files.iter().filter(|f| !snapshot.join(f).exists()).filter_map(|f| size_of(f)).sum();
        self.check_space(id, missing)?;
        for file in &files {
            self.fetch(id, &snapshot, file, size_of(file))?;
        }
        self.write_ref(id, &listing.sha)?;
        Ok(Resolved { path: main_path(id, &snapshot, &files), commit: listing.sha, files })
    }

    /// The small files and, for sentence-transformers repositories, each module's config.
    fn first_files(
        &self,
        id: &HubId,
        names: &BTreeSet<&str>,
        fetch: &mut dyn FnMut(&str) -> Result<PathBuf, HubError>,
    ) -> Result<Vec<String>, HubError> {
        if !names.contains("config.json") {
            let ggufs: Vec<&str> = names.iter().copied().filter(|n| n.ends_with(".gguf")).collect();
            let message = if ggufs.is_empty() {
                format!("no config.json at {}: not a transformers model repository", id.revision())
            } else {
                format!(
                    "holds GGUF files: name one quantization, e.g. {}:{}",
                    id.repo,
                    quants(&ggufs).join(" or :")
                )
            };
            return Err(HubError::Repository { repo: id.repo.clone(), message });
        }
        let mut files = small_files(names);
        if names.contains("modules.json") {
            let modules = fetch("modules.json")?;
            for dir in module_dirs(&modules) {
                let config = format!("{dir}/config.json");
                if names.contains(config.as_str()) {
                    files.push(config);
                }
            }
        }
        Ok(files)
    }

    /// `model.safetensors`, or the index and every shard it names.
    fn weight_files(
        &self,
        id: &HubId,
        names: &BTreeSet<&str>,
        fetch: &mut dyn FnMut(&str) -> Result<PathBuf, HubError>,
    ) -> Result<Vec<String>, HubError> {
        if names.contains(WEIGHTS_INDEX) {
            let index = fetch(WEIGHTS_INDEX)?;
            let shards = index_shards(&index)?;
            if let Some(absent) = shards.iter().find(|s| !names.contains(s.as_str())) {
                return Err(HubError::Repository {
                    repo: id.repo.clone(),
                    message: format!("{WEIGHTS_INDEX} names {absent}, which the repository does not have"),
                });
            }
            Ok(std::iter::once(WEIGHTS_INDEX.to_owned()).chain(shards).collect())
        } else if names.contains(WEIGHTS) {
            Ok(vec![WEIGHTS.to_owned()])
        } else {
            Err(HubError::Repository {
                repo: id.repo.clone(),
                message: format!("no {WEIGHTS} or {WEIGHTS_INDEX} at {}", id.revision()),
            })
        }
    }

    /// `GET /api/models/{repo}/revision/{revision}?blobs=true`: the commit and the files with
    /// their sizes.
    fn listing(&self, id: &HubId) -> Result<Listing, HubError> {
        let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision().to_owned());
        let response = self
            .api
            .repo(repo)
            .info_request()
            .query("blobs", "true")
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .call();
        let mut response = response.map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let code =
            response.headers().get("x-error-code").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        if status != 200 {
            return Err(self.status_error(id, status, &code, None));
        }
        response.body_mut().read_json::<Listing>().map_err(|e| HubError::Repository {
            repo: id.repo.clone(),
            message: format!("the hub's listing of the repository is not valid: {e}"),
        })
    }

    /// One file of the snapshot, downloaded unless it is there already, with its size checked.
    fn fetch(&self, id: &HubId, snapshot: &Path, file: &str, size: Option<u64>) -> Result<PathBuf, HubError> {
        let target = snapshot.join(file);
        if !target.exists() && std::fs::symlink_metadata(&target).is_ok() {
            // A link whose blob was deleted: `hf-hub` would fail to link over it.
            std::fs::remove_file(&target).map_err(|source| HubError::Io { path: target.clone(), source })?;
        }
        if !target.exists() {
            let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision().to_owned());
            let mut attempt = 0;
            let landed = loop {
                match self.api.repo(repo.clone()).download(file) {
                    Ok(path) => break path,
                    // Another process holds the blob's lock: it is downloading the same file.
                    Err(ApiError::LockAcquisition(_)) if !target.exists() => continue,
                    Err(ApiError::LockAcquisition(_)) => break target.clone(),
                    Err(e) if attempt < RETRIES && is_retryable(&e) => {
                        attempt += 1;
                        self.drop_unusable_part(id, &repo, file);
                        std::thread::sleep(Duration::from_millis(100 << attempt));
                    }
                    Err(e) => return Err(self.download_error(id, file, e)),
                }
            };
            if landed != target {
                return Err(HubError::Download {
                    repo: id.repo.clone(),
                    file: file.to_owned(),
                    message: format!(
                        "{} moved to another commit during the download; run again",
                        id.revision()
                    ),
                });
            }
        }
        if let Some(expected) = size {
            let found = std::fs::metadata(&target)
                .map_err(|source| HubError::Io { path: target.clone(), source })?
                .len();
            if found != expected {
                let blob = std::fs::canonicalize(&target).ok();
                let _ = std::fs::remove_file(&target);
                if let Some(blob) = blob {
                    let _ = std::fs::remove_file(blob);
                }
                return Err(HubError::SizeMismatch {
                    repo: id.repo.clone(),
                    file: file.to_owned(),
                    found,
                    expected,
                });
            }
        }
        Ok(target)
    }

    /// A part file the next attempt cannot resume: as long as the file or longer. `hf-hub` would
    /// ask for the bytes after its end (a 416) or refuse it, so every later run would fail too.
    fn drop_unusable_part(&self, id: &HubId, repo: &Repo, file: &str) {
        let Ok(metadata) = self.api.metadata(&self.api.repo(repo.clone()).url(file)) else { return };
        let part = self.repo_dir(&id.repo).join("blobs").join(format!("{}.part", metadata.etag()));
        if std::fs::metadata(&part).is_ok_and(|m| m.len() >= metadata.size() as u64) {
            let _ = std::fs::remove_file(part);
        }
    }

    /// The snapshot `id` names in the cache, if it has every file a model needs.
    fn resolve_cached(&self, id: &HubId, hint: &'static str) -> Result<Resolved, HubError> {
        let not_cached = |what: String| HubError::NotCached {
            id: id.to_string(),
            what,
            cache: self.settings.cache_dir.clone(),
            hint,
        };
        let repo_dir = self.repo_dir(&id.repo);
        let commit = if is_commit(id.revision()) {
            id.revision().to_owned()
        } else {
            let reference = repo_dir.join("refs").join(id.revision());
            std::fs::read_to_string(&reference)
                .map(|c| c.trim().to_owned())
                .map_err(|_| not_cached(format!("no ref {}", id.revision())))?
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        let names = snapshot_files(&snapshot);
        if names.is_empty() {
            return Err(not_cached(format!("no snapshot {commit}")));
        }
        let mut files: Vec<String> = match &id.quant {
            Some(quant) => gguf_files(id, names.iter().map(String::as_str), quant)?,
            None => {
                let present: BTreeSet<&str> = names.iter().map(String::as_str).collect();
                if !present.contains("config.json") {
                    return Err(not_cached(format!("snapshot {commit} has no config.json")));
                }
                let mut files = small_files(&present);
                files.extend(
                    self.weight_files(id, &present, &mut |file| Ok(snapshot.join(file)))
                        .map_err(|e| not_cached(e.to_string()))?,
                );
                files
            }
        };
        files.sort();
        Ok(Resolved { path: main_path(id, &snapshot, &files), commit, files })
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.settings.cache_dir.join(format!("models--{}", repo.replace('/', "--")))
    }

    /// `refs/{revision}` as `huggingface_hub` writes it; a commit needs no ref.
    fn write_ref(&self, id: &HubId, commit: &str) -> Result<(), HubError> {
        if is_commit(id.revision()) {
            return Ok(());
        }
        let path = self.repo_dir(&id.repo).join("refs").join(id.revision());
        let io = |source| HubError::Io { path: path.clone(), source };
        std::fs::create_dir_all(path.parent().expect("a ref has a folder")).map_err(io)?;
        std::fs::write(&path, commit).map_err(io)
    }

    fn check_space(&self, id: &HubId, needed: u64) -> Result<(), HubError> {
        let dir = &self.settings.cache_dir;
        std::fs::create_dir_all(dir).map_err(|source| HubError::Io { path: dir.clone(), source })?;
        match free_bytes(dir) {
            Some(free) if free < needed => Err(HubError::DiskFull {
                id: id.to_string(),
                dir: dir.clone(),
                needed: needed.div_ceil(1 << 20),
                free: free >> 20,
            }),
            _ => Ok(()),
        }
    }

    fn transport_error(&self, e: &ureq::Error) -> HubError {
        HubError::Network {
            endpoint: self.settings.endpoint.clone(),
            detail: e.to_string(),
            cache: self.settings.cache_dir.clone(),
        }
    }

    /// An HTTP error status as the user should read it. `code` is the hub's `X-Error-Code`
    /// (empty where `hf-hub` does not pass the headers on); `file` is set for a file download.
    fn status_error(&self, id: &HubId, status: u16, code: &str, file: Option<&str>) -> HubError {
        let repo = id.repo.clone();
        let endpoint = self.settings.endpoint.clone();
        let has_token = self.settings.token.is_some();
        match (status, code) {
            (404, "RevisionNotFound") => {
                HubError::RevisionNotFound { repo, revision: id.revision().into(), endpoint }
            }
            (404, "EntryNotFound") | (404, "") if file.is_some() => HubError::Download {
                repo,
                file: file.unwrap_or_default().into(),
                message: format!("not in the repository at {}", id.revision()),
            },
            (401, "RepoNotFound") | (404, _) => HubError::RepoNotFound { repo, endpoint },
            (401 | 403, _) if !has_token => HubError::NeedsToken { repo, endpoint },
            (401 | 403, _) => HubError::Forbidden { repo, endpoint, status },
            (status, _) => HubError::Repository { repo, message: format!("the hub answered HTTP {status}") },
        }
    }

    fn download_error(&self, id: &HubId, file: &str, e: ApiError) -> HubError {
        let e = match e {
            ApiError::TooManyRetries(inner) => *inner,
            e => e,
        };
        match e {
            ApiError::RequestError(e) => match *e {
                ureq::Error::StatusCode(status) => self.status_error(id, status, "", Some(file)),
                e if is_unreachable(&e) => self.transport_error(&e),
                e => HubError::Download {
                    repo: id.repo.clone(),
                    file: file.to_owned(),
                    message: format!(
                        "{e}, {RETRIES} retries later; what arrived is kept: run again to resume"
                    ),
                },
            },
            ApiError::IoError(e)
                if e.kind() != std::io::ErrorKind::StorageFull && e.raw_os_error().is_none() =>
            {
                HubError::Download {
                    repo: id.repo.clone(),
                    file: file.to_owned(),
                    message: format!(
                        "{e}, {RETRIES} retries later; what arrived is kept: run again to resume"
                    ),
                }
            }
            ApiError::IoError(source) if source.kind() == std::io::ErrorKind::StorageFull => {
                HubError::DiskFull {
                    id: id.to_string(),
                    dir: self.settings.cache_dir.clone(),
                    needed: 0,
                    free: free_bytes(&self.settings.cache_dir).unwrap_or(0) >> 20,
                }
            }
            e => HubError::Download { repo: id.repo.clone(), file: file.to_owned(), message: e.to_string() },
        }
    }
}

/// A failure that another attempt may not meet: a transfer that broke, a server error.
fn is_retryable(e: &ApiError) -> bool {
    match e {
        ApiError::RequestError(e) => match &**e {
            ureq::Error::StatusCode(status) => *status == 416 || *status == 429 || *status >= 500,
            e => !is_unreachable(e),
        },
        ApiError::IoError(e) => e.kind() != std::io::ErrorKind::StorageFull,
        ApiError::InvalidResume | ApiError::MissingHeader(_) | ApiError::InvalidHeader(_) => true,
        _ => false,
    }
}

/// Whether the hub could not be reached at all, as opposed to a transfer that broke.
fn is_unreachable(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Timeout(_)
        | ureq::Error::Tls(_) => true,
        ureq::Error::Io(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::NetworkDown
                | ErrorKind::AddrNotAvailable
                | ErrorKind::TimedOut
        ),
        _ => false,
    }
}

/// The GGUF files of one quantization (every part of a split file), and llama.cpp's choice of
/// vision projector if the repository has one.
fn gguf_files<'a>(
    id: &HubId,
    names: impl Iterator<Item = &'a str>,
    quant: &str,
) -> Result<Vec<String>, HubError> {
    let names: Vec<&str> = names.collect();
    let ggufs: Vec<&str> = names.iter().copied().filter(|n| n.ends_with(".gguf") && !is_mmproj(n)).collect();
    let wanted = quant.to_ascii_lowercase();
    let matching: Vec<String> =
        ggufs.iter().filter(|n| carries_quant(n, &wanted)).map(|n| n.to_string()).collect();
    if matching.is_empty() {
        let message = if ggufs.is_empty() {
            "has no GGUF files: drop the :QUANT to use its safetensors".to_owned()
        } else {
            format!("no GGUF file for {quant}; it has {}", quants(&ggufs).join(", "))
        };
        return Err(HubError::Repository { repo: id.repo.clone(), message });
    }
    let mut files = matching;
    let mut projectors: Vec<&str> =
        names.iter().copied().filter(|n| n.ends_with(".gguf") && is_mmproj(n)).collect();
    // llama.cpp's converters write the projector in F16 by default: take that one if there are several.
    projectors.sort_by_key(|n| quant_of(n).as_deref() != Some("f16"));
    files.extend(projectors.first().map(|p| p.to_string()));
    Ok(files)
}

fn is_mmproj(name: &str) -> bool {
    name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase().contains("mmproj")
}

/// A GGUF file's name without `.gguf` and a split file's `-00001-of-00002`, lower case, and
/// its folder's name.
fn gguf_stem(name: &str) -> Option<(String, Option<String>)> {
    let lower = name.to_ascii_lowercase();
    let stem = lower.strip_suffix(".gguf")?;
    let stem = match stem.rfind("-of-") {
        Some(at) if stem[at + 4..].bytes().all(|b| b.is_ascii_digit()) => {
            stem[..at].rsplit_once('-').map_or(stem, |(head, _)| head)
        }
        _ => stem,
    };
    let (folder, base) = match stem.rsplit_once('/') {
        Some((dir, base)) => (Some(dir.rsplit('/').next().unwrap_or(dir).to_owned()), base),
        None => (None, stem),
    };
    Some((base.to_owned(), folder))
}

/// The files of `SMALL_FILES` that `names` has.
fn small_files(names: &BTreeSet<&str>) -> Vec<String> {
    SMALL_FILES.iter().filter(|f| names.contains(**f)).map(|f| f.to_string()).collect()
}

/// Whether a GGUF file is of quantization `wanted` (lower case): its name ends in it after a
/// separator (`Model-Q4_K_M.gguf`, `model.q4_k_m.gguf`), or its folder is named so.
fn carries_quant(name: &str, wanted: &str) -> bool {
    let Some((base, folder)) = gguf_stem(name) else { return false };
    (base.ends_with(wanted) && base[..base.len() - wanted.len()].ends_with(['-', '.']))
        || folder.as_deref() == Some(wanted)
}

/// The quantization a GGUF file name carries (`Qwen3.5-0.8B-Q4_K_M.gguf` → `q4_k_m`), or a split
/// file's (`Q4_K_M/x-00001-of-00002.gguf`), among the usual ones.
fn quant_of(name: &str) -> Option<String> {
    let (base, folder) = gguf_stem(name)?;
    const KNOWN: &[&str] = &[
        "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1", "q4_k_m", "q4_k_s", "q4_0",
        "q4_1", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k", "iq4_xs", "iq4_nl", "iq3_m", "iq3_xxs", "iq2_m",
        "iq2_xxs", "q4_k_l", "q6_k_l", "q5_k_l", "q3_k_xl", "q2_k_l",
    ];
    KNOWN
        .iter()
        .filter(|q| base.ends_with(*q) && base[..base.len() - q.len()].ends_with(['-', '.']))
        .max_by_key(|q| q.len())
        .map(|q| q.to_string())
        .or_else(|| folder.filter(|f| KNOWN.contains(&f.as_str())))
}

fn quants(ggufs: &[&str]) -> Vec<String> {
    let set: BTreeSet<String> = ggufs.iter().filter_map(|n| quant_of(n)).map(|q| q.to_uppercase()).collect();
    if set.is_empty() {
        ggufs.iter().map(|s| s.to_string()).collect()
    } else {
        set.into_iter().collect()
    }
}

/// What the caller loads: the snapshot folder, or a quant's first GGUF file.
fn main_path(id: &HubId, snapshot: &Path, files: &[String]) -> PathBuf {
    match id.quant {
        Some(_) => snapshot.join(files.iter().find(|f| !is_mmproj(f)).expect("a quant has a file")),
        None => snapshot.to_owned(),
    }
}

/// The folders of a sentence-transformers pipeline's modules (`1_Pooling`, …).
fn module_dirs(modules_json: &Path) -> Vec<String> {
    #[derive(Deserialize)]
    struct Module {
        path: String,
    }
    let modules: Vec<Module> =
        std::fs::read(modules_json).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    modules.into_iter().map(|m| m.path).filter(|p| !p.is_empty() && is_relative_inside(p)).collect()
}

/// The shard files an index names, each once.
fn index_shards(index: &Path) -> Result<Vec<String>, HubError> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let bytes = std::fs::read(index).map_err(|source| HubError::Io { path: index.to_owned(), source })?;
    let index_json: Index = serde_json::from_slice(&bytes).map_err(|e| HubError::Repository {
        repo: index.display().to_string(),
        message: format!("not a valid safetensors index: {e}"),
    })?;
    let shards: BTreeSet<String> = index_json.weight_map.into_values().collect();
    if let Some(bad) = shards.iter().find(|s| !is_relative_inside(s)) {
        return Err(HubError::Repository {
            repo: index.display().to_string(),
            message: format!("shard `{bad}` is outside the repository"),
        });
    }
    Ok(shards.into_iter().collect())
}

fn is_relative_inside(path: &str) -> bool {
    Path::new(path).components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Every file under a snapshot folder, relative to it.
fn snapshot_files(snapshot: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &relative, out);
            } else if path.is_file() {
                out.push(relative);
            }
        }
    }
    let mut out = Vec::new();
    walk(snapshot, "", &mut out);
    out.sort();
    out
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs the call fills in.
    (unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0)
        .then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// A repository in the cache, as `qwenrt list` shows it.
#[derive(Clone, Debug)]
pub struct CachedRepo {
    pub repo: String,
    /// `(ref, commit)`: branches and tags resolved before.
    pub refs: Vec<(String, String)>,
    /// Commits with a snapshot folder.
    pub snapshots: Vec<String>,
    /// Bytes of all its blobs.
    pub bytes: u64,
    /// What the newest snapshot holds: `safetensors`, `gguf`, or `incomplete`.
    pub kind: &'static str,
}

/// The model repositories in the cache, sorted by id.
pub fn cached_repos(cache_dir: &Path) -> Result<Vec<CachedRepo>, HubError> {
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(HubError::Io { path: cache_dir.to_owned(), source }),
    };
    let mut repos = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(repo) = name.strip_prefix("models--") else { continue };
        let dir = entry.path();
        let mut refs = Vec::new();
        let refs_dir = dir.join("refs");
        for file in snapshot_files(&refs_dir) {
            if let Ok(commit) = std::fs::read_to_string(refs_dir.join(&file)) {
                refs.push((file, commit.trim().to_owned()));
            }
        }
        let mut snapshots: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(dir.join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let time = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                (time, e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        snapshots.sort();
        let bytes = std::fs::read_dir(dir.join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().contains('.'))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let kind = match snapshots.last() {
            Some((_, commit)) => {
                let files = snapshot_files(&dir.join("snapshots").join(commit));
                let has = |f: &str| files.iter().any(|n| n == f);
                if files.iter().any(|n| n.ends_with(".gguf")) {
                    "gguf"
                } else if has("config.json") && (has(WEIGHTS) || has(WEIGHTS_INDEX)) {
                    "safetensors"
                } else {
                    "incomplete"
                }
            }
            None => "incomplete",
        };
        repos.push(CachedRepo {
            repo: repo.replacen("--", "/", 1),
            refs,
            snapshots: snapshots.into_iter().rev().map(|(_, c)| c).collect(),
            bytes,
            kind,
        });
    }
    repos.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(repos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_as_the_hub_and_llama_cpp_spell_them() {
        let id = HubId::parse("Qwen/Qwen3.5-0.8B").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision(), id.quant.as_deref()),
            ("Qwen/Qwen3.5-0.8B", "main", None)
        );
        let id = HubId::parse("Qwen/Qwen3.5-0.8B@refs/pr/7").unwrap();
        assert_eq!(id.revision(), "refs/pr/7");
        let id = HubId::parse("unsloth/Qwen3.5-0.8B-GGUF:Q4_K_M").unwrap();
        assert_eq!(id.quant.as_deref(), Some("Q4_K_M"));
        let id = HubId::parse("a/b@v1.0:q8_0").unwrap();
        assert_eq!((id.revision(), id.quant.as_deref()), ("v1.0", Some("q8_0")));
        assert_eq!(id.to_string(), "a/b@v1.0:q8_0");
        for bad in [
            "model",
            "a/b/c",
            "../x",
            "a/..",
            "/abs/path",
            "a/b@",
            "a/b:",
            "a/b@../../x",
            "a/b@x y",
            ".a/b",
            "a/b-",
            "C:/models/x",
            "./a/b",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_follow_huggingface_hub() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
        };
        let s = HubSettings::from_vars(vars(&[("HOME", "/h")]));
        assert_eq!(s.cache_dir, Path::new("/h/.cache/huggingface/hub"));
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert!(!s.offline);
        let s = HubSettings::from_vars(vars(&[
            ("HOME", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("HF_HUB_OFFLINE", "1"),
        ]));
        assert_eq!(s.cache_dir, Path::new("/x/huggingface/hub"));
        assert!(s.offline);
        let s = HubSettings::from_vars(vars(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_ENDPOINT", "http://mirror/"),
            ("HF_TOKEN", " hf_x \n"),
            ("HF_HUB_OFFLINE", "false"),
        ]));
        assert_eq!(s.cache_dir, Path::new("/c"));
        assert_eq!(s.endpoint, "http://mirror");
        assert_eq!(s.token.as_deref(), Some("hf_x"));
        assert!(!s.offline);
        let s = HubSettings::from_vars(vars(&[("HF_HOME", "/hf")]));
        assert_eq!(s.cache_dir, Path::new("/hf/hub"));
    }

    #[test]
    fn quantizations_are_read_off_file_names() {
        assert_eq!(quant_of("Qwen3.5-0.8B-Q4_K_M.gguf").as_deref(), Some("q4_k_m"));
        assert_eq!(quant_of("qwen3.5-0.8b-q8_0.gguf").as_deref(), Some("q8_0"));
        assert_eq!(quant_of("Model-UD-Q4_K_XL.gguf"), None);
        assert!(
            carries_quant("Model-UD-Q4_K_XL.gguf", "ud-q4_k_xl")
                && carries_quant("Model-UD-Q4_K_XL.gguf", "q4_k_xl")
        );
        assert!(!carries_quant("Model-Q4_K_M.gguf", "k_m") && !carries_quant("Model-BF16.gguf", "f16"));
        assert_eq!(quant_of("Q4_K_M/Model-Q4_K_M-00001-of-00002.gguf").as_deref(), Some("q4_k_m"));
        assert_eq!(quant_of("BF16/model-00002-of-00003.gguf").as_deref(), Some("bf16"));
        assert_eq!(quant_of("Model.Q5_K_S.gguf").as_deref(), Some("q5_k_s"));
        let id = HubId::parse("u/r:Q4_K_M").unwrap();
        let names = [
            "Model-Q4_K_M.gguf",
            "Model-Q4_K_S.gguf",
            "Model-Q8_0.gguf",
            "mmproj-Model-BF16.gguf",
            "mmproj-Model-F16.gguf",
        ];
        assert_eq!(
            gguf_files(&id, names.into_iter(), "Q4_K_M").unwrap(),
            ["Model-Q4_K_M.gguf", "mmproj-Model-F16.gguf"]
        );
        let e = gguf_files(&id, names.into_iter(), "Q3_K_M").unwrap_err().to_string();
        assert!(e.contains("no GGUF file for Q3_K_M; it has Q4_K_M, Q4_K_S, Q8_0"), "{e}");
    }
}
