//! A cache of session-state snapshots keyed by the token prefix that produced them.
//!
//! DeltaNet layers fold the whole past into a fixed-size recurrent state, which cannot be
//! rewound to an earlier position the way a KV cache can be truncated. To continue a
//! conversation from a prefix of what a state has seen, that prefix's state must have been saved
//! when it went by: this cache holds those snapshots (KV caches up to the prefix plus the
//! DeltaNet conv and recurrent states), bounded by bytes and evicted least recently used first.

use crate::model::Snapshot;

/// Default byte budget of a session's prompt cache: room for a few snapshots of a 2,000-token
/// conversation with Qwen3.5-0.8B (about 70 MB each).
pub const DEFAULT_PROMPT_CACHE_BYTES: usize = 512 << 20;

struct Entry {
    tokens: Vec<u32>,
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

    /// The snapshot of the longest cached prefix of `tokens` no longer than `max_len`, marked as
    /// just used.
    pub fn longest_prefix(&mut self, tokens: &[u32], max_len: usize) -> Option<&Snapshot> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.tokens.len() <= max_len.min(tokens.len()))
            .filter(|(_, e)| tokens.starts_with(&e.tokens))
            .max_by_key(|(_, e)| e.tokens.len())
            .map(|(i, _)| i)?;
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        Some(&entry.snapshot)
    }

    /// Whether a snapshot of exactly `tokens` is held.
    pub fn contains(&self, tokens: &[u32]) -> bool {
        self.entries.iter().any(|e| e.tokens == tokens)
    }

    /// Stores the state reached after `tokens`; `bytes` is its size
    /// ([`SessionState::cache_bytes`](crate::SessionState::cache_bytes) when it was taken).
    /// A snapshot larger than the whole budget is not kept.
    pub fn insert(&mut self, tokens: Vec<u32>, snapshot: Snapshot, bytes: usize) {
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.tokens == tokens) {
            e.last_used = self.clock;
            return;
        }
        if bytes > self.budget {
            return;
        }
        self.evict_to(self.budget - bytes);
        self.bytes += bytes;
        self.entries.push(Entry { tokens, snapshot, bytes, last_used: self.clock });
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

    fn snapshot() -> Snapshot {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-vl");
        let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        SessionState::new(&config, 64).snapshot()
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
}
