//! A cache of session-state snapshots keyed by the token prefix that produced them.
//!
//! DeltaNet layers fold the whole past into a fixed-size recurrent state, which cannot be
//! rewound to an earlier position the way a KV cache can be truncated. To continue a
//! conversation from a prefix of what a state has seen, that prefix's state must have been saved
//! when it went by: this cache holds those snapshots (KV caches up to the prefix plus the
//! DeltaNet conv and recurrent states), bounded by bytes and evicted least recently used first.
//!
//! Token ids alone do not say what a state saw: every image of one size expands to the same run
//! of `<|image_pad|>` tokens. A key is therefore the token ids plus a [`MediaMark`] per image or
//! video (where its placeholders start, a hash of its pixels); a saved state serves a prompt
//! only if both agree up to the state's length.

use crate::model::Snapshot;

/// An image or video in a token sequence: the index of its first placeholder token and a hash of
/// its pixels ([`crate::vision::ImageInput::hash`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MediaMark {
    pub start: usize,
    pub hash: u64,
}

/// The marks of `media` (sorted by `start`) whose placeholders start before token `len`: the
/// media a state holding the first `len` tokens has seen.
pub fn media_before(media: &[MediaMark], len: usize) -> &[MediaMark] {
    &media[..media.partition_point(|m| m.start < len)]
}

/// Whether a state that consumed `prefix` (with `prefix_media`) holds the beginning of `tokens`
/// (with `media`): same ids, and the same pictures at the same places.
pub fn is_prefix(prefix: &[u32], prefix_media: &[MediaMark], tokens: &[u32], media: &[MediaMark]) -> bool {
    tokens.starts_with(prefix) && media_before(media, prefix.len()) == prefix_media
}

/// Default byte budget of a session's prompt cache: room for a few snapshots of a 2,000-token
/// conversation with Qwen3.5-0.8B (about 70 MB each).
pub const DEFAULT_PROMPT_CACHE_BYTES: usize = 512 << 20;

struct Entry {
    tokens: Vec<u32>,
    /// The images and videos among `tokens`, in order.
    media: Vec<MediaMark>,
    snapshot: Snapshot,
    bytes: usize,
    last_used: u64,
}

/// Lookup counters, for measuring how much prefill the cache saves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Prompts looked up.
    pub lookups: u64,
    /// Lookups that found a usable prefix (in the cache or in the live state).
    pub hits: u64,
    /// Prompt tokens looked up, and how many of them were served from a saved state.
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
}

impl CacheStats {
    /// Fraction of prompt tokens that did not need a prefill.
    pub fn token_hit_rate(&self) -> f64 {
        if self.prompt_tokens == 0 {
            0.0
        } else {
            self.cached_tokens as f64 / self.prompt_tokens as f64
        }
    }
}

/// Snapshots keyed by token prefix, least recently used evicted first once `budget` bytes are
/// exceeded. A budget of 0 disables it.
pub struct PromptCache {
    entries: Vec<Entry>,
    budget: usize,
    bytes: usize,
    clock: u64,
}

impl std::fmt::Debug for PromptCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptCache")
            .field("entries", &self.entries.len())
            .field("bytes", &self.bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

impl Default for PromptCache {
    fn default() -> Self {
        Self::new(DEFAULT_PROMPT_CACHE_BYTES)
    }
}

impl PromptCache {
    pub fn new(budget_bytes: usize) -> Self {
        PromptCache { entries: Vec::new(), budget: budget_bytes, bytes: 0, clock: 0 }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Changes the byte budget, evicting what no longer fits.
    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes;
        self.evict_to(bytes);
    }

    /// Bytes held by the snapshots.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Lengths of the cached prefixes, most recently used first.
    pub fn prefix_lengths(&self) -> Vec<usize> {
        let mut e: Vec<&Entry> = self.entries.iter().collect();
        e.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        e.iter().map(|e| e.tokens.len()).collect()
    }

    /// The snapshot of the longest cached prefix of text `tokens` no longer than `max_len`,
    /// marked as just used.
    pub fn longest_prefix(&mut self, tokens: &[u32], max_len: usize) -> Option<&Snapshot> {
        self.longest_prefix_with(tokens, &[], max_len)
    }

    /// [`longest_prefix`](Self::longest_prefix) of `tokens` whose images and videos are `media`
    /// (sorted by position): a snapshot serves only if it saw the same ones at the same places.
    pub fn longest_prefix_with(
        &mut self,
        tokens: &[u32],
        media: &[MediaMark],
        max_len: usize,
    ) -> Option<&Snapshot> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.tokens.len() <= max_len.min(tokens.len()))
            .filter(|(_, e)| is_prefix(&e.tokens, &e.media, tokens, media))
            .max_by_key(|(_, e)| e.tokens.len())
            .map(|(i, _)| i)?;
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        Some(&entry.snapshot)
    }

    /// The length of the snapshot [`longest_prefix_with`](Self::longest_prefix_with) would
    /// return (0 for none), without marking it used.
    pub fn longest_prefix_len(&self, tokens: &[u32], media: &[MediaMark], max_len: usize) -> usize {
        self.entries
            .iter()
            .filter(|e| e.tokens.len() <= max_len.min(tokens.len()))
            .filter(|e| is_prefix(&e.tokens, &e.media, tokens, media))
            .map(|e| e.tokens.len())
            .max()
            .unwrap_or(0)
    }

    /// Whether a snapshot of exactly text `tokens` is held.
    pub fn contains(&self, tokens: &[u32]) -> bool {
        self.contains_with(tokens, &[])
    }

    /// Whether a snapshot of exactly `tokens` with `media` is held.
    pub fn contains_with(&self, tokens: &[u32], media: &[MediaMark]) -> bool {
        self.entries.iter().any(|e| e.tokens == tokens && e.media == media)
    }

    /// Stores the state reached after text `tokens`; `bytes` is its size
    /// ([`SessionState::cache_bytes`](crate::SessionState::cache_bytes) when it was taken).
    /// A snapshot larger than the whole budget is not kept.
    pub fn insert(&mut self, tokens: Vec<u32>, snapshot: Snapshot, bytes: usize) {
        self.insert_with(tokens, Vec::new(), snapshot, bytes)
    }

    /// [`insert`](Self::insert) for `tokens` with the images and videos `media` among them.
    pub fn insert_with(&mut self, tokens: Vec<u32>, media: Vec<MediaMark>, snapshot: Snapshot, bytes: usize) {
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.tokens == tokens && e.media == media) {
            e.last_used = self.clock;
            return;
        }
        if bytes > self.budget {
            return;
        }
        self.evict_to(self.budget - bytes);
        self.bytes += bytes;
        self.entries.push(Entry { tokens, media, snapshot, bytes, last_used: self.clock });
    }

    fn evict_to(&mut self, limit: usize) {
        while self.bytes > limit {
            let Some(oldest) =
                self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i)
            else {
                break;
            };
            let e = self.entries.swap_remove(oldest);
            self.bytes -= e.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::SessionState;
    use qwenrt_kernels::attention::CacheFormat;
    use qwenrt_kernels::FloatFormat;

    fn snapshot() -> Snapshot {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-vl");
        let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        SessionState::new(&config, 64, CacheFormat::Float(FloatFormat::F32)).snapshot()
    }

    #[test]
    fn longest_prefix_wins_and_lru_evicts_by_bytes() {
        let s = snapshot();
        let mut cache = PromptCache::new(300);
        cache.insert(vec![1, 2], s.clone(), 100);
        cache.insert(vec![1, 2, 3, 4], s.clone(), 100);
        cache.insert(vec![9], s.clone(), 100);
        assert!(cache.longest_prefix(&[1, 2, 3, 4, 5], usize::MAX).is_some());
        assert_eq!(cache.prefix_lengths()[0], 4, "the longest matching prefix was used");
        assert!(cache.longest_prefix(&[1, 2, 3], usize::MAX).is_some());
        assert_eq!(cache.prefix_lengths()[0], 2, "[1, 2, 3, 4] is not a prefix of [1, 2, 3]");
        assert!(cache.longest_prefix(&[1, 2, 3, 4], 3).is_some());
        assert_eq!(cache.prefix_lengths()[0], 2, "max_len excludes the longer entry");
        assert!(cache.longest_prefix(&[5], usize::MAX).is_none());

        // [9] is now the least recently used: a fourth entry evicts it, and only it.
        cache.insert(vec![7, 7], s.clone(), 100);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.bytes(), 300);
        assert!(!cache.contains(&[9]) && cache.contains(&[7, 7]) && cache.contains(&[1, 2]));
        // Too big for the budget: not kept, nothing evicted.
        cache.insert(vec![8], s.clone(), 301);
        assert_eq!((cache.len(), cache.contains(&[8])), (3, false));
        cache.set_budget(150);
        assert_eq!(cache.len(), 1);
        assert!(cache.bytes() <= 150);
        cache.clear();
        assert!(cache.is_empty() && cache.bytes() == 0);
        let mut off = PromptCache::new(0);
        off.insert(vec![1], s, 1);
        assert!(off.is_empty(), "a zero budget disables the cache");
    }

    #[test]
    fn a_different_picture_at_the_same_tokens_is_not_a_prefix() {
        let s = snapshot();
        let mut cache = PromptCache::new(1000);
        let pad = 248_056;
        let (a, b) = (MediaMark { start: 1, hash: 0xa }, MediaMark { start: 1, hash: 0xb });
        // A state after text, one after an image with hash a.
        cache.insert(vec![1], s.clone(), 10);
        cache.insert_with(vec![1, pad, pad, 2], vec![a], s.clone(), 10);
        let prompt = [1, pad, pad, 2, 3];
        assert!(cache.longest_prefix_with(&prompt, &[a], usize::MAX).is_some());
        assert_eq!(cache.prefix_lengths()[0], 4, "same picture: the image state serves");
        assert!(cache.longest_prefix_with(&prompt, &[b], usize::MAX).is_some());
        assert_eq!(cache.prefix_lengths()[0], 1, "another picture: only the text before it");
        assert!(cache.longest_prefix(&prompt, usize::MAX).is_some());
        assert_eq!(cache.prefix_lengths()[0], 1, "a text lookup never takes an image state");
        assert!(
            cache.contains_with(&[1, pad, pad, 2], &[a]) && !cache.contains_with(&[1, pad, pad, 2], &[b])
        );
        // A mark at or after the prefix's end does not concern it.
        assert!(is_prefix(&[1], &[], &prompt, &[a]));
        assert!(!is_prefix(&[1, pad], &[], &prompt, &[a]));
        assert_eq!(media_before(&[a, MediaMark { start: 9, hash: 1 }], 9), &[a]);
    }
}
