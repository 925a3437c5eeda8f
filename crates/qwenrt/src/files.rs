//! Reading a model folder's files (and local media) with checks first: only regular files, and
//! no more bytes than such a file could hold, so that a FIFO, a device or a runaway file given as
//! a config fails with a message instead of blocking on open or filling memory. Symbolic links are
//! followed (the Hugging Face cache links every file to its blob); a loop is an error, not a
//! missing file.

use std::io::{self, Read};
use std::path::Path;

/// Configs, templates, shard indexes: far above any real one.
pub(crate) const CONFIG_LIMIT: u64 = 64 << 20;
/// `tokenizer.json` (Qwen3.5's is 12 MB).
pub(crate) const TOKENIZER_LIMIT: u64 = 512 << 20;
/// An image or a video file.
pub(crate) const MEDIA_LIMIT: u64 = 512 << 20;

/// The size of `path` if it is a regular file (after following links).
fn regular_file_len(path: &Path) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(meta.len());
    }
    let what = if kind.is_dir() { "a folder" } else { special_kind(&kind) };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file")))
}

#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

/// Opens `path` for reading if it is a regular file.
pub(crate) fn open(path: &Path) -> io::Result<std::fs::File> {
    regular_file_len(path)?;
    std::fs::File::open(path)
}

/// Reads a regular file of at most `limit` bytes.
pub(crate) fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let len = regular_file_len(path)?;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {} MiB such a file may have", limit >> 20),
        )
    };
    if len > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow between the size check and the read.
    std::fs::File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub(crate) fn read_to_string(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text ({e})")))
}

/// Whether something is at `path`: false only when nothing is; a link loop or an unreadable
/// folder is an error.
pub(crate) fn exists(path: &Path) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(format!("qwenrt-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.json");
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(read_to_string(&file, 2).unwrap(), "{}");
        let e = read_to_string(&file, 1).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = read_to_string(&dir, CONFIG_LIMIT).unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
        assert!(!exists(&dir.join("missing")).unwrap());
        #[cfg(unix)]
        {
            let e = read(Path::new("/dev/zero"), CONFIG_LIMIT).unwrap_err().to_string();
            assert!(e.contains("a device"), "{e}");
            let fifo = dir.join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
            assert!(made.success());
            // Opening a FIFO for reading would block until a writer comes: it must not be opened.
            let e = read(&fifo, CONFIG_LIMIT).unwrap_err().to_string();
            assert!(e.contains("a FIFO"), "{e}");
            let looped = dir.join("loop");
            std::os::unix::fs::symlink(&looped, &looped).unwrap();
            assert!(exists(&looped).is_err(), "a link loop is not a missing file");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
