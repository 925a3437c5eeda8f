//! Memory-mapped safetensors checkpoints: a single `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Tensors are looked up by their Hugging Face names and checked
//! against the shape the config implies before any model code sees them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// Element type of a stored tensor that qwenrt can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
}

struct Shard {
    path: PathBuf,
    mmap: Arc<Mmap>,
    /// Byte offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// A read-only view of one tensor inside a mapped file.
pub struct TensorRef<'a> {
    pub name: String,
    pub file: &'a Path,
    pub dtype: StoredDtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
    map: &'a Arc<Mmap>,
    range: std::ops::Range<usize>,
}

impl TensorRef<'_> {
    /// The tensor's bytes as a shared handle on the mapping (zero-copy, keeps the file mapped).
    pub fn mapped(&self) -> MappedBytes {
        MappedBytes { map: Arc::clone(self.map), range: self.range.clone() }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Widens the tensor to f32 (exact for bf16 and f16).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        widen(self.dtype, self.bytes, &mut out);
        out
    }

    /// [`to_f32`](Self::to_f32), refusing a NaN or an infinity (a corrupt file).
    pub fn to_finite_f32(&self) -> Result<Vec<f32>> {
        let values = self.to_f32();
        if values.iter().all(|v| v.is_finite()) {
            Ok(values)
        } else {
            Err(self.non_finite())
        }
    }

    /// Refuses a NaN or an infinity by reading the stored bits, for weights used in place from
    /// the mapping: an all-ones exponent is what every non-finite value of these formats has.
    /// It reads the whole tensor once, on all threads (about 0.1 s a GB; its pages are read
    /// by the first forward pass anyway).
    pub fn check_finite(&self) -> Result<()> {
        use rayon::prelude::*;
        fn any_all_ones<const N: usize>(bytes: &[u8], mask: u32) -> bool {
            bytes.par_chunks(1 << 20).any(|piece| {
                // A fold without early exit, so the compiler vectorizes it.
                piece.chunks_exact(N).fold(false, |found, b| {
                    let mut word = [0u8; 4];
                    word[..N].copy_from_slice(b);
                    found | (u32::from_le_bytes(word) & mask == mask)
                })
            })
        }
        let non_finite = match self.dtype {
            StoredDtype::F32 => any_all_ones::<4>(self.bytes, 0x7f80_0000),
            StoredDtype::BF16 => any_all_ones::<2>(self.bytes, 0x7f80),
            StoredDtype::F16 => any_all_ones::<2>(self.bytes, 0x7c00),
        };
        if non_finite {
            Err(self.non_finite())
        } else {
            Ok(())
        }
    }

    /// The error for a tensor found to hold a NaN or an infinity.
    pub fn non_finite(&self) -> Error {
        Error::NonFiniteWeights { file: self.file.to_owned(), name: self.name.clone() }
    }

    /// Bytes per stored element.
    pub fn element_bytes(&self) -> usize {
        match self.dtype {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::BF16 => 2,
        }
    }
}

/// Widens little-endian `bytes` of `dtype` into `out` (exact for bf16 and f16).
pub fn widen(dtype: StoredDtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        StoredDtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        StoredDtype::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        StoredDtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
    }
}

/// A byte range of a memory-mapped file that keeps the mapping alive.
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    range: std::ops::Range<usize>,
}

impl MappedBytes {
    /// Tells the kernel the pages of this range will not be needed soon (after a tensor was
    /// converted), so that loading a checkpoint at another precision does not keep both copies
    /// resident. A later read simply faults the pages back in from the file.
    pub fn release_pages(&self) {
        self.release_pages_of(0..self.range.len());
    }

    /// [`release_pages`](Self::release_pages) for bytes `part` of this range only.
    pub fn release_pages_of(&self, part: std::ops::Range<usize>) {
        debug_assert!(part.end <= self.range.len());
        #[cfg(unix)]
        // SAFETY: the mapping is a private, read-only map of a file: dropping its pages cannot
        // change what any reference observes, only make the next access read the file again.
        unsafe {
            let _ = self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.range.start + part.start,
                part.len(),
            );
        }
    }
}

impl std::ops::Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// All tensors of a checkpoint, memory-mapped.
pub struct WeightStore {
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    index: HashMap<String, usize>,
}

/// A name that joined to a folder stays inside it: relative, one or more normal components
/// (shards in subfolders are allowed), no `..`.
fn is_plain_file_name(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

impl WeightStore {
    /// Opens the safetensors files of a model folder: the index's shards when
    /// `model.safetensors.index.json` exists, else `model.safetensors` (as transformers does; other
    /// `*.safetensors` files in the folder, such as adapters, are not the model).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        let files: Vec<PathBuf> = if crate::files::exists(&index_path).map_err(io(&index_path))? {
            let text = crate::files::read_to_string(&index_path, crate::files::CONFIG_LIMIT)
                .map_err(io(&index_path))?;
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let index: Index = serde_json::from_str(&text)
                .map_err(|source| Error::Json { path: index_path.clone(), source })?;
            let mut names: Vec<&String> = index.weight_map.values().collect();
            names.sort();
            names.dedup();
            // A shard is a file of this folder: `../x` or `/etc/passwd` is not opened. (Links
            // are followed, as the Hugging Face cache links each file to its blob.)
            if let Some(bad) = names.iter().find(|n| !is_plain_file_name(n)) {
                return Err(Error::Safetensors {
                    path: index_path,
                    message: format!("shard {bad:?} is not a file name inside the model folder"),
                });
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if crate::files::exists(&dir.join("model.safetensors")).map_err(io(dir))? {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(Error::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model folder",
                ),
            });
        };
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for path in files {
            let file = crate::files::open(path).map_err(|source| Error::Io { path: path.clone(), source })?;
            // SAFETY: the mapping is read-only. Like every mmap-based loader we rely on the file
            // not being truncated underneath us while the model is alive.
            let mmap =
                unsafe { Mmap::map(&file) }.map_err(|source| Error::Io { path: path.clone(), source })?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                Error::Safetensors { path: path.clone(), message: describe_safetensors_error(&e, mmap.len()) }
            })?;
            for name in metadata.tensors().keys() {
                if let Some(prev) = index.insert(name.clone(), shards.len()) {
                    let prev: &Shard = &shards[prev];
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` is also stored in {}", prev.path.display()),
                    });
                }
            }
            shards.push(Shard {
                path: path.clone(),
                mmap: Arc::new(mmap),
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(WeightStore { shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Total bytes of all mapped files.
    pub fn mapped_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.mmap.len()).sum()
    }

    fn searched(&self) -> String {
        self.shards.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Looks up `name` and checks that its shape is `expected`.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<TensorRef<'_>> {
        let &shard_idx = self
            .index
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_owned(), searched: self.searched() })?;
        let shard = &self.shards[shard_idx];
        let info = shard.metadata.info(name).expect("indexed tensor has metadata");
        if info.shape != expected {
            return Err(Error::ShapeMismatch {
                file: shard.path.clone(),
                name: name.to_owned(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let dtype = match info.dtype {
            Dtype::F32 => StoredDtype::F32,
            Dtype::F16 => StoredDtype::F16,
            Dtype::BF16 => StoredDtype::BF16,
            other => {
                return Err(Error::UnsupportedDtype {
                    file: shard.path.clone(),
                    name: name.to_owned(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let (begin, end) = info.data_offsets;
        // read_metadata validated that the offsets tile the data section and fit the file.
        let range = shard.data_start + begin..shard.data_start + end;
        let bytes = &shard.mmap[range.clone()];
        Ok(TensorRef {
            name: name.to_owned(),
            file: &shard.path,
            dtype,
            shape: &info.shape,
            bytes,
            map: &shard.mmap,
            range,
        })
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file is only {file_len} bytes, too short for a header"),
        E::InvalidHeaderLength => {
            format!("header length exceeds the file size ({file_len} bytes): truncated or not safetensors")
        }
        E::MetadataIncompleteBuffer => {
            format!("tensor data extends past the end of the file ({file_len} bytes): the file is truncated")
        }
        E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_) | E::HeaderTooLarge => {
            format!("corrupt JSON header ({e})")
        }
        other => other.to_string(),
    }
}

/// Name, element type and shape of a stored tensor (for `inspect`).
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

impl WeightStore {
    /// Every tensor in the checkpoint, sorted by name.
    pub fn tensor_infos(&self) -> Vec<TensorInfo> {
        let mut infos: Vec<TensorInfo> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.metadata.tensors().into_iter().map(|(name, info)| TensorInfo {
                    name,
                    dtype: format!("{:?}", info.dtype),
                    shape: info.shape.clone(),
                })
            })
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }
}
