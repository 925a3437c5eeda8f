//! Hub ids against a stand-in hub on 127.0.0.1 serving the fixture folders: downloads into the
//! Python library's cache layout, cache reuse, revisions, a resumed download, offline mode, and
//! the errors a user meets (404, 401, 403, no network, a wrong size, no disk space). Nothing here
//! reaches the internet.

use std::path::{Path, PathBuf};

use qwenrt::hub::{Hub, HubError, HubId, HubSettings};
use qwenrt_test_support::hub::{Commit, StandInHub};

/// Attempts per file after the first (the library's `RETRIES`).
const RETRIES: usize = 5;

fn settings(hub_url: &str, cache: &Path) -> HubSettings {
    HubSettings {
        endpoint: hub_url.to_owned(),
        cache_dir: cache.to_owned(),
        token: None,
        offline: false,
        progress: false,
    }
}

fn resolve(settings: &HubSettings, id: &str) -> Result<qwenrt::hub::Resolved, HubError> {
    Hub::new(settings.clone())?.resolve(&HubId::parse(id).expect("a hub id"))
}

/// The stand-in with `test/tiny-vl` (sharded weights, chat template, and files a model does not
/// need) and `test/tiny-embed` (a sentence-transformers folder).
fn hub_with_fixtures() -> (StandInHub, PathBuf, PathBuf) {
    let hub = StandInHub::start();
    let vl = qwenrt_test_support::tiny_vl_folder("hub-vl");
    let embed = qwenrt_test_support::tiny_embed_folder("hub-embed");
    hub.add_repo("test/tiny-vl", vec![Commit::from_dir(&vl, &["main"], "")]);
    hub.add_repo("test/tiny-embed", vec![Commit::from_dir(&embed, &["main"], "")]);
    (hub, vl, embed)
}

/// File requests other than the one-byte probe that reads a file's commit, etag and size.
fn downloads(log: &[String]) -> Vec<&String> {
    log.iter().filter(|l| l.starts_with("get ") && !l.ends_with("bytes=0-0")).collect()
}

#[test]
fn a_model_downloads_into_the_standard_cache_layout_and_loads() {
    let (hub, vl, _) = hub_with_fixtures();
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let resolved = resolve(&settings(&hub.url, &cache), "test/tiny-vl").unwrap();

    let repo_dir = cache.join("models--test--tiny-vl");
    assert_eq!(resolved.path, repo_dir.join("snapshots").join(&resolved.commit));
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), resolved.commit);
    // Only what the runtime reads: not the fixture's expected outputs or the stray MTP file.
    assert_eq!(
        resolved.files,
        [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    );
    for file in &resolved.files {
        let link = resolved.path.join(file);
        let target = std::fs::read_link(&link).unwrap();
        assert!(
            target.starts_with("../../blobs"),
            "{file} links to {}, not relative into blobs/",
            target.display()
        );
        assert_eq!(std::fs::read(&link).unwrap(), std::fs::read(vl.join(file)).unwrap(), "{file}");
    }
    assert!(!resolved.path.join("expected.json").exists());
    qwenrt::LanguageModel::load(&resolved.path).unwrap();
}

#[test]
fn a_sentence_transformers_repository_brings_its_module_configs() {
    let (hub, _, embed) = hub_with_fixtures();
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let resolved = resolve(&settings(&hub.url, &cache), "test/tiny-embed").unwrap();
    assert!(resolved.files.contains(&"1_Pooling/config.json".to_owned()), "{:?}", resolved.files);
    let from_hub = qwenrt::Embedder::load(&resolved.path).unwrap();
    let from_folder = qwenrt::Embedder::load(&embed).unwrap();
    let options = qwenrt::EmbedOptions::default();
    let texts = ["a hub id", "a folder"];
    let a = from_hub.embed(&texts, &options).unwrap();
    let b = from_folder.embed(&texts, &options).unwrap();
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.vector, b.vector);
    }
}

#[test]
fn a_cached_model_is_not_downloaded_again_and_offline_needs_no_network() {
    let (hub, _, _) = hub_with_fixtures();
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let settings = settings(&hub.url, &cache);
    let first = resolve(&settings, "test/tiny-vl").unwrap();
    assert_eq!(downloads(&hub.take_log()).len(), 8, "each file once");

    let again = resolve(&settings, "test/tiny-vl").unwrap();
    assert_eq!(again.path, first.path);
    assert_eq!(hub.take_log(), ["listing test/tiny-vl"], "only the listing, no file");

    let offline = HubSettings { offline: true, endpoint: "http://127.0.0.1:9".into(), ..settings.clone() };
    let cached = resolve(&offline, "test/tiny-vl").unwrap();
    assert_eq!((cached.path, cached.files), (first.path.clone(), first.files.clone()));
    assert!(hub.take_log().is_empty());

    // Hub unreachable but the cache complete: used as it is, as transformers does.
    let unreachable = HubSettings { endpoint: "http://127.0.0.1:9".into(), ..settings.clone() };
    assert_eq!(resolve(&unreachable, "test/tiny-vl").unwrap().path, first.path);

    // A blob deleted by hand (its link dangles) is downloaded again, and only it.
    let link = first.path.join("tokenizer.json");
    std::fs::remove_file(first.path.join(std::fs::read_link(&link).unwrap())).unwrap();
    hub.take_log();
    resolve(&settings, "test/tiny-vl").unwrap();
    let log = hub.take_log();
    assert_eq!(downloads(&log), ["get test/tiny-vl tokenizer.json bytes=0-"], "{log:?}");
    assert!(std::fs::metadata(&link).is_ok());
}

#[test]
fn offline_with_a_missing_model_or_file_says_what_is_missing() {
    let (hub, _, _) = hub_with_fixtures();
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let offline = HubSettings { offline: true, ..settings(&hub.url, &cache) };
    let e = resolve(&offline, "test/tiny-vl").unwrap_err().to_string();
    assert!(e.contains("test/tiny-vl is not in the cache") && e.contains("HF_HUB_OFFLINE"), "{e}");

    let resolved = resolve(&settings(&hub.url, &cache), "test/tiny-vl").unwrap();
    std::fs::remove_file(resolved.path.join("model-00002-of-00002.safetensors")).unwrap();
    hub.take_log();
    let e = resolve(&offline, "test/tiny-vl").unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    assert!(hub.take_log().is_empty());
}

#[test]
fn revisions_resolve_to_their_own_snapshots() {
    let hub = StandInHub::start();
    let old = qwenrt_test_support::tiny_vl_folder("hub-old");
    let new = qwenrt_test_support::tiny_vl_folder("hub-new");
    std::fs::write(new.join("generation_config.json"), r#"{"temperature": 0.5}"#).unwrap();
    let old_commit = Commit::from_dir(&old, &["v1.0"], "old");
    let new_commit = Commit::from_dir(&new, &["main"], "new");
    let old_sha = old_commit.sha.clone();
    hub.add_repo("test/tiny-vl", vec![old_commit, new_commit]);
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let settings = settings(&hub.url, &cache);

    let main = resolve(&settings, "test/tiny-vl").unwrap();
    let tagged = resolve(&settings, "test/tiny-vl@v1.0").unwrap();
    assert_eq!(tagged.commit, old_sha);
    assert_ne!(main.commit, tagged.commit);
    let config =
        |r: &qwenrt::hub::Resolved| std::fs::read_to_string(r.path.join("generation_config.json")).unwrap();
    assert_eq!(config(&main), r#"{"temperature": 0.5}"#);
    assert_eq!(config(&tagged), std::fs::read_to_string(old.join("generation_config.json")).unwrap());
    let refs = cache.join("models--test--tiny-vl/refs");
    assert_eq!(std::fs::read_to_string(refs.join("v1.0")).unwrap(), old_sha);

    let by_commit = resolve(&settings, &format!("test/tiny-vl@{old_sha}")).unwrap();
    assert_eq!(by_commit.path, tagged.path);
    assert!(!refs.join(&old_sha).exists(), "a commit gets no ref, as in huggingface_hub");
    let offline = HubSettings { offline: true, ..settings };
    assert_eq!(resolve(&offline, &format!("test/tiny-vl@{old_sha}")).unwrap().path, tagged.path);
    assert_eq!(resolve(&offline, "test/tiny-vl@v1.0").unwrap().path, tagged.path);

    let e = resolve(&offline, "test/tiny-vl@v2").unwrap_err().to_string();
    assert!(e.contains("no ref v2"), "{e}");
}

#[test]
fn a_cut_connection_resumes_where_it_stopped() {
    let (hub, vl, _) = hub_with_fixtures();
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let shard = "model-00001-of-00002.safetensors";
    hub.cut_next_download("test/tiny-vl", shard, 1 << 20);
    let resolved = resolve(&settings(&hub.url, &cache), "test/tiny-vl").unwrap();
    assert_eq!(std::fs::read(resolved.path.join(shard)).unwrap(), std::fs::read(vl.join(shard)).unwrap());
    let log = hub.take_log();
    let gets: Vec<&String> =
        log.iter().filter(|l| l.starts_with(&format!("get test/tiny-vl {shard} bytes="))).collect();
    assert!(
        gets.iter().any(|l| l.ends_with(&format!("bytes={}-", 1 << 20))),
        "the second request asks for the rest only: {gets:?}"
    );
    let blobs = std::fs::read_dir(cache.join("models--test--tiny-vl/blobs")).unwrap();
    let leftovers: Vec<_> =
        blobs.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".part")).collect();
    assert!(leftovers.is_empty(), "no partial file is left behind");
}

#[test]
fn a_download_cut_for_good_resumes_on_the_next_run() {
    let (hub, vl, _) = hub_with_fixtures();
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let settings = settings(&hub.url, &cache);
    let shard = "model-00001-of-00002.safetensors";
    // 2 MiB get through, then every retry of this run is cut at once.
    hub.cut_next_download("test/tiny-vl", shard, 2 << 20);
    for _ in 0..RETRIES {
        hub.cut_next_download("test/tiny-vl", shard, 0);
    }
    let e = resolve(&settings, "test/tiny-vl").unwrap_err().to_string();
    assert!(e.contains(shard), "{e}");
    hub.take_log();

    let resolved = resolve(&settings, "test/tiny-vl").unwrap();
    assert_eq!(std::fs::read(resolved.path.join(shard)).unwrap(), std::fs::read(vl.join(shard)).unwrap());
    let log = hub.take_log();
    let wanted = format!("get test/tiny-vl {shard} bytes={}-", 2 << 20);
    assert!(log.contains(&wanted), "the next run asks for the rest only: {log:?}");
}

#[test]
fn unknown_repositories_and_revisions_are_named() {
    let (hub, _, _) = hub_with_fixtures();
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let settings = settings(&hub.url, &cache);
    let e = resolve(&settings, "test/no-such-model").unwrap_err().to_string();
    assert!(e.contains("test/no-such-model: no such repository"), "{e}");
    let e = resolve(&settings, "test/tiny-vl@no-such-branch").unwrap_err().to_string();
    assert!(e.contains("no revision `no-such-branch`"), "{e}");
    let e = resolve(&settings, "test/tiny-vl:Q4_K_M").unwrap_err().to_string();
    assert!(e.contains("has no GGUF files"), "{e}");
}

#[test]
fn a_gated_repository_needs_the_right_token() {
    let (hub, _, _) = hub_with_fixtures();
    hub.gate("test/tiny-vl", "hf_right");
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let settings = settings(&hub.url, &cache);
    let e = resolve(&settings, "test/tiny-vl").unwrap_err().to_string();
    assert!(e.contains("gated or private") && e.contains("HF_TOKEN"), "{e}");
    let wrong = HubSettings { token: Some("hf_wrong".into()), ..settings.clone() };
    let e = resolve(&wrong, "test/tiny-vl").unwrap_err().to_string();
    assert!(e.contains("refused the token (403)"), "{e}");
    let right = HubSettings { token: Some("hf_right".into()), ..settings };
    qwenrt::LanguageModel::load(&resolve(&right, "test/tiny-vl").unwrap().path).unwrap();
}

#[test]
fn no_network_says_what_to_do() {
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    // Nothing listens on port 9 (discard) of the loopback here.
    let e = resolve(&settings("http://127.0.0.1:9", &cache), "test/tiny-vl").unwrap_err().to_string();
    assert!(e.contains("cannot reach http://127.0.0.1:9") && e.contains("HF_HUB_OFFLINE=1"), "{e}");
}

#[test]
fn a_size_that_disagrees_with_the_listing_is_caught_and_removed() {
    let (hub, _, _) = hub_with_fixtures();
    hub.misreport_size("test/tiny-vl", "config.json", 10);
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let e = resolve(&settings(&hub.url, &cache), "test/tiny-vl").unwrap_err().to_string();
    assert!(e.contains("config.json has") && e.contains("the hub lists 10"), "{e}");
    let snapshot =
        std::fs::read_dir(cache.join("models--test--tiny-vl/snapshots")).unwrap().next().unwrap().unwrap();
    assert!(!snapshot.path().join("config.json").exists());
}

#[test]
fn a_model_larger_than_the_free_disk_is_refused_before_downloading() {
    let (hub, _, _) = hub_with_fixtures();
    hub.misreport_size("test/tiny-vl", "model-00001-of-00002.safetensors", 1 << 60);
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let e = resolve(&settings(&hub.url, &cache), "test/tiny-vl").unwrap_err().to_string();
    assert!(e.contains("not enough disk space"), "{e}");
    let log = hub.take_log();
    assert!(!log.iter().any(|l| l.contains("00001")), "nothing of the weights was requested: {log:?}");
}

#[test]
fn concurrent_downloads_of_one_model_agree() {
    let (hub, vl, _) = hub_with_fixtures();
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let settings = settings(&hub.url, &cache);
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let runs: Vec<_> =
            (0..3).map(|_| s.spawn(|| resolve(&settings, "test/tiny-vl").unwrap().path)).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    for file in ["model-00001-of-00002.safetensors", "tokenizer.json"] {
        assert_eq!(std::fs::read(paths[0].join(file)).unwrap(), std::fs::read(vl.join(file)).unwrap());
    }
}

#[test]
fn a_cache_written_by_huggingface_hub_is_read_as_it_is() {
    // The layout `huggingface_hub.hf_hub_download` leaves: blobs named by etag, relative links.
    let source = qwenrt_test_support::tiny_vl_folder("hub-py");
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let repo = cache.join("models--Qwen--Qwen3.5-0.8B");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, entry) in std::fs::read_dir(&source).unwrap().flatten().enumerate() {
        let etag = format!("{i:064x}");
        std::fs::copy(entry.path(), repo.join("blobs").join(&etag)).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(&etag),
            repo.join("snapshots").join(commit).join(entry.file_name()),
        )
        .unwrap();
    }
    let offline = HubSettings { offline: true, ..settings("http://127.0.0.1:9", &cache) };
    let resolved = resolve(&offline, "Qwen/Qwen3.5-0.8B").unwrap();
    qwenrt::LanguageModel::load(&resolved.path).unwrap();

    let listed = qwenrt::hub::cached_repos(&cache).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo, "Qwen/Qwen3.5-0.8B");
    assert_eq!(listed[0].refs, [("main".to_owned(), commit.to_owned())]);
    assert_eq!(listed[0].kind, "safetensors");
}

#[test]
fn a_part_file_that_is_already_whole_is_replaced_not_resumed() {
    let (hub, vl, _) = hub_with_fixtures();
    let shard = "model-00001-of-00002.safetensors";
    let first = qwenrt_test_support::temp_dir("hub-cache");
    let done = resolve(&settings(&hub.url, &first), "test/tiny-vl").unwrap();
    let etag = std::fs::read_link(done.path.join(shard)).unwrap().file_name().unwrap().to_owned();

    // A run that died between the last byte and the rename leaves the whole file as its part.
    let cache = qwenrt_test_support::temp_dir("hub-cache");
    let blobs = cache.join("models--test--tiny-vl/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut part = etag.clone();
    part.push(".part");
    std::fs::copy(vl.join(shard), blobs.join(&part)).unwrap();
    let resolved = resolve(&settings(&hub.url, &cache), "test/tiny-vl").unwrap();
    assert_eq!(std::fs::read(resolved.path.join(shard)).unwrap(), std::fs::read(vl.join(shard)).unwrap());
    assert!(!blobs.join(&part).exists());
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether `huggingface_hub` (the library transformers downloads with) imports. scripts/test
/// installs it and sets QWENRT_REQUIRE_HF_HUB=1, so CI fails instead of skipping when it is missing.
fn huggingface_hub_available() -> bool {
    let found = std::process::Command::new(python())
        .args(["-c", "import huggingface_hub"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("QWENRT_REQUIRE_HF_HUB").is_none(),
            "QWENRT_REQUIRE_HF_HUB is set but `{} -c 'import huggingface_hub'` fails",
            python()
        );
        eprintln!(
            "SKIPPED: the cache is not checked against huggingface_hub: `{} -c 'import huggingface_hub'` fails \
             (pip install -r scripts/requirements-test.txt)",
            python()
        );
    }
    found
}

/// Runs Python with the stand-in hub as endpoint and `cache` as the hub cache; its stdout.
fn run_python(hub_url: &str, cache: &Path, script: &str) -> String {
    let out = std::process::Command::new(python())
        .args(["-c", script])
        .env("HF_ENDPOINT", hub_url)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_cache_is_shared_with_huggingface_hub_both_ways() {
    if !huggingface_hub_available() {
        return;
    }
    let (hub, vl, _) = hub_with_fixtures();

    // huggingface_hub downloads; qwenrt then finds everything offline.
    let cache = qwenrt_test_support::temp_dir("hub-py-first");
    let printed = run_python(
        &hub.url,
        &cache,
        "from huggingface_hub import snapshot_download\n\
         print(snapshot_download('test/tiny-vl', ignore_patterns=['expected*', 'mtp*']))",
    );
    let offline = HubSettings { offline: true, ..settings("http://127.0.0.1:9", &cache) };
    let resolved = resolve(&offline, "test/tiny-vl").unwrap();
    assert_eq!(resolved.path, Path::new(printed.trim()));
    qwenrt::LanguageModel::load(&resolved.path).unwrap();

    // qwenrt downloads; huggingface_hub then finds every file offline, and its cache scan
    // reports nothing wrong.
    let cache = qwenrt_test_support::temp_dir("hub-rust-first");
    let resolved = resolve(&settings(&hub.url, &cache), "test/tiny-vl").unwrap();
    let files = serde_json::to_string(&resolved.files).unwrap();
    let printed = run_python(
        "http://127.0.0.1:9",
        &cache,
        &format!(
            "import json\n\
             from huggingface_hub import hf_hub_download, scan_cache_dir\n\
             for f in json.loads('{files}'):\n\
             \x20   print(hf_hub_download('test/tiny-vl', f, local_files_only=True))\n\
             info = scan_cache_dir()\n\
             assert not info.warnings, info.warnings\n\
             (repo,) = info.repos\n\
             (revision,) = repo.revisions\n\
             print(repo.repo_id, revision.commit_hash, sorted(revision.refs), revision.nb_files)"
        ),
    );
    let lines: Vec<&str> = printed.lines().collect();
    for (file, line) in resolved.files.iter().zip(&lines) {
        assert_eq!(Path::new(line), resolved.path.join(file));
        assert_eq!(std::fs::read(line).unwrap(), std::fs::read(vl.join(file)).unwrap(), "{file}");
    }
    assert_eq!(
        lines.last().unwrap(),
        &format!("test/tiny-vl {} ['main'] {}", resolved.commit, resolved.files.len())
    );
}
