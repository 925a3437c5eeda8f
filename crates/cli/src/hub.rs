//! `qwenrt pull` and `qwenrt list`: models in the Hugging Face cache, and `--model` given as a
//! hub id.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use qwenrt::hub::{self, Hub, HubId, HubSettings};

#[derive(Args)]
pub struct PullArgs {
    /// Hub id: `owner/name`, `owner/name@revision`, or `owner/name:QUANT` for a GGUF repository.
    id: String,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The folder a `--model` names: the path itself if it exists, else the snapshot of a hub id
/// (downloaded into the Hugging Face cache if it is not there).
pub fn locate_model(spec: &Path) -> Result<PathBuf> {
    let Some(text) = spec.to_str() else { return Ok(spec.to_owned()) };
    let path = hub::locate(text)?;
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        bail!(
            "{} is a GGUF file, which qwenrt cannot load yet: use the model's safetensors repository or folder",
            path.display()
        );
    }
    Ok(path)
}

/// The name a served model goes by: the hub id as given, or the folder's name.
pub fn model_name(spec: &Path) -> String {
    match spec.to_str() {
        Some(text) if !spec.exists() && HubId::parse(text).is_some() => text.to_owned(),
        _ => {
            let path = spec.canonicalize().unwrap_or_else(|_| spec.to_owned());
            path.file_name().map_or_else(|| "qwenrt".to_owned(), |n| n.to_string_lossy().into_owned())
        }
    }
}

pub fn pull(args: PullArgs) -> Result<()> {
    let Some(id) = HubId::parse(&args.id) else {
        bail!("`{}` is not a hub id: owner/name, owner/name@revision or owner/name:QUANT", args.id)
    };
    let resolved = Hub::new(HubSettings::from_env())?.resolve(&id)?;
    eprintln!("{id}: {} files at commit {}", resolved.files.len(), resolved.commit);
    println!("{}", resolved.path.display());
    Ok(())
}

pub fn list(args: ListArgs) -> Result<()> {
    let settings = HubSettings::from_env();
    let repos = hub::cached_repos(&settings.cache_dir)?;
    if args.json {
        let rows: Vec<serde_json::Value> = repos
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.repo,
                    "refs": r.refs.iter().map(|(name, commit)| serde_json::json!({"name": name, "commit": commit})).collect::<Vec<_>>(),
                    "snapshots": r.snapshots,
                    "bytes": r.bytes,
                    "kind": r.kind,
                })
            })
            .collect();
        let out = serde_json::json!({"cache": settings.cache_dir, "models": rows});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if repos.is_empty() {
        eprintln!("no models in {}: `qwenrt pull owner/name` downloads one", settings.cache_dir.display());
        return Ok(());
    }
    let id_width = repos.iter().map(|r| r.repo.len()).max().unwrap_or(0).max("MODEL".len());
    println!("{:id_width$}  {:>10}  {:<11}  REVISIONS", "MODEL", "SIZE", "KIND");
    for r in &repos {
        let mut revisions: Vec<String> = r
            .refs
            .iter()
            .map(|(name, commit)| format!("{name} ({})", &commit[..commit.len().min(8)]))
            .collect();
        let unnamed = r.snapshots.iter().filter(|s| !r.refs.iter().any(|(_, c)| c == *s));
        revisions.extend(unnamed.map(|s| s[..s.len().min(8)].to_owned()));
        println!(
            "{:id_width$}  {:>10}  {:<11}  {}",
            r.repo,
            human_bytes(r.bytes),
            r.kind,
            revisions.join(", ")
        );
    }
    eprintln!("cache: {}", settings.cache_dir.display());
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}
