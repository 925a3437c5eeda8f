//! The text side of a turn: sampled ids to reasoning and content deltas.

use super::*;
use crate::tokenizer::Utf8Stream;

/// Turns sampled ids into reasoning and content deltas: whole UTF-8 characters only, the
/// newlines the template strips around a thought removed, stop strings held back until they can
/// be ruled out and cut when they appear.
pub(super) struct TextOut {
    decoder: Utf8Stream,
    stops: Vec<String>,
    in_thought: bool,
    /// At the start of a thought or of the answer after one: leading newlines are dropped.
    at_start: bool,
    /// Newlines at the end of the reasoning so far, held back (the template strips them).
    newlines: usize,
    /// Text that may be the beginning of a stop string.
    held: String,
    reasoning: String,
    content: String,
}

impl TextOut {
    pub(super) fn new(stops: &[String], in_thought: bool) -> Self {
        TextOut {
            decoder: Utf8Stream::default(),
            stops: stops.to_vec(),
            in_thought,
            // The template strips the newlines that open a thought and those between `</think>`
            // and the answer; an answer that starts the turn is shown as generated.
            at_start: in_thought,
            newlines: 0,
            held: String::new(),
            reasoning: String::new(),
            content: String::new(),
        }
    }

    pub(super) fn in_thought(&self) -> bool {
        self.in_thought
    }

    pub(super) fn ends_with_newline(&self) -> bool {
        self.newlines > 0 || self.held.ends_with('\n')
    }

    /// Returns the stop string if this token completed one.
    pub(super) fn push_token(
        &mut self,
        tokenizer: &Tokenizer,
        id: u32,
        emit: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<String>> {
        // The embedding table is padded past the tokenizer's vocabulary; such ids have no text.
        if id as usize >= tokenizer.vocab_size() {
            return Ok(None);
        }
        let piece = self.decoder.push_token(tokenizer, id)?;
        Ok(self.push_text(&piece, emit))
    }

    fn push_text(&mut self, piece: &str, emit: &mut dyn FnMut(Event<'_>)) -> Option<String> {
        let mut piece = piece;
        if self.at_start {
            piece = piece.trim_start_matches('\n');
            if piece.is_empty() {
                return None;
            }
            self.at_start = false;
        }
        self.held.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = found {
            let (before, stop) = (self.held[..at].to_owned(), stop.clone());
            self.held.clear();
            self.emit(&before, emit);
            return Some(stop);
        }
        let ready = self.held.len() - partial_stop_len(&self.held, &self.stops);
        if ready > 0 {
            let text: String = self.held.drain(..ready).collect();
            self.emit(&text, emit);
        }
        None
    }

    fn emit(&mut self, text: &str, emit: &mut dyn FnMut(Event<'_>)) {
        if text.is_empty() {
            return;
        }
        if !self.in_thought {
            self.content.push_str(text);
            emit(Event::Content(text));
            return;
        }
        let body = text.trim_end_matches('\n');
        if body.is_empty() {
            self.newlines += text.len();
            return;
        }
        let mut delta = "\n".repeat(self.newlines);
        delta.push_str(body);
        self.newlines = text.len() - body.len();
        self.reasoning.push_str(&delta);
        emit(Event::Reasoning(&delta));
    }

    /// Flushes what the channel holds (no stop string can complete any more).
    fn flush(&mut self, emit: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        let rest = std::mem::take(&mut self.decoder).finish();
        if !rest.is_empty() && self.push_text(&rest, emit).is_some() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        self.emit(&held, emit);
        Ok(())
    }

    pub(super) fn close_thought(&mut self, emit: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        self.flush(emit)?;
        self.in_thought = false;
        self.at_start = true;
        self.newlines = 0;
        Ok(())
    }

    pub(super) fn finish(&mut self, emit: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        self.flush(emit)
    }

    pub(super) fn into_texts(self) -> (String, String) {
        (self.reasoning, self.content)
    }
}

/// Length of the longest end of `text` that is the beginning of a stop string (and so must
/// wait for the next token before it can be shown).
pub(super) fn partial_stop_len(text: &str, stops: &[String]) -> usize {
    let bytes = text.as_bytes();
    let mut best = 0;
    for stop in stops {
        let longest = (stop.len() - 1).min(bytes.len());
        for k in (best + 1..=longest).rev() {
            if text.is_char_boundary(bytes.len() - k)
                && stop.as_bytes().starts_with(&bytes[bytes.len() - k..])
            {
                best = k;
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_stop_strings_are_held_back() {
        let stops = ["END".to_owned(), "\n\n".to_owned()];
        assert_eq!(partial_stop_len("abc", &stops), 0);
        assert_eq!(partial_stop_len("abcE", &stops), 1);
        assert_eq!(partial_stop_len("abcEN", &stops), 2);
        assert_eq!(partial_stop_len("abc\n", &stops), 1);
        assert_eq!(partial_stop_len("EN", &stops), 2);
        assert_eq!(partial_stop_len("é", &["éa".to_owned()]), 2, "whole characters");
    }
}
