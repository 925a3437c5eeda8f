//! A turn in progress: it samples from the logits the session hands it, streams text, and
//! decides when it is over.

use super::*;
use crate::speculative::Drafts;
use crate::tokenizer::Tokenizer;

/// One assistant turn in progress. The session feeds [`pending`](Self::pending) tokens to the
/// model and hands the logits back; the turn samples, streams text and decides when it is over.
pub struct Turn {
    pub(super) lm: Arc<LanguageModel>,
    pub(super) markers: Arc<Markers>,
    pub(super) params: ChatParams,
    pub(super) sampler: Sampler,
    /// Tokens to feed next: the rest of the prompt, then each sampled token (plus what closes a
    /// thought on budget).
    pub(super) pending: Vec<u32>,
    /// For a prompt with images or videos, until its rest (`pending`) is fed: the prompt and the
    /// tower's outputs for that rest.
    pub(super) media: Option<PendingMedia>,
    /// Most prompt tokens one step feeds.
    pub(super) prefill_chunk: usize,
    /// Where the state is to be saved on its way through a deferred prompt (just after the last
    /// assistant header), while that point is ahead: a piece of the prompt ends there.
    pub(super) snapshot_at: Option<usize>,
    pub(super) tokens: Vec<u32>,
    pub(super) logprobs: Vec<TokenLogprob>,
    pub(super) out: TextOut,
    pub(super) prompt_len: usize,
    pub(super) cached: usize,
    pub(super) sampled: usize,
    pub(super) reasoning_tokens: usize,
    pub(super) start: Instant,
    pub(super) first_token_at: Option<Instant>,
    pub(super) stop_string: Option<String>,
    pub(super) finish: Option<FinishReason>,
    /// The constraint on the answer, if any; it applies once the thought (if any) is over.
    pub(super) guided: Option<Guided>,
    /// Drafts and verifies with the MTP head, for a turn that decodes speculatively.
    pub(super) speculator: Option<Speculator>,
    /// What ended the turn inside a batch step, for the caller to collect.
    pub(super) error: Option<Error>,
}

/// A constraint's progress, and whether the answer it applies to has begun.
pub(super) struct Guided {
    pub(super) text: GuidedText,
    pub(super) active: bool,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("prompt_len", &self.prompt_len)
            .field("sampled", &self.sampled)
            .field("finish", &self.finish)
            .finish_non_exhaustive()
    }
}

impl Turn {
    /// Tokens the model must consume before the next sample.
    pub fn pending(&self) -> &[u32] {
        &self.pending
    }

    /// Tokens still to feed before the first sample: the part of the prompt not fed yet (and
    /// what closes a thought given no budget); 0 once the turn has sampled or is over.
    pub fn prefill_remaining(&self) -> usize {
        if self.sampled > 0 || self.finish.is_some() {
            return 0;
        }
        self.pending.len()
    }

    /// Feeds what is left of the prompt at most `tokens` (at least one) per step from now on;
    /// the default is all of it in the next step. Decoding steps are not affected, nor the rest
    /// of a prompt with images or videos (fed whole). A scheduler may change it before every
    /// step to share a budget of prompt tokens among the turns it prefills.
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens.max(1);
    }

    /// Whether the turn is over.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Tokens sampled so far.
    pub fn sampled(&self) -> usize {
        self.sampled
    }

    /// The error that ended this turn during [`ChatSession::advance_many`], once: the batch's
    /// other turns went on. ([`ChatSession::advance`] returns such an error directly.)
    pub fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    /// The tokens to feed next, or `None` once the turn is over (cancelled, out of budget or
    /// context, or stopped).
    pub(super) fn next_input(&mut self, session: &ChatSession) -> Option<&[u32]> {
        if self.finish.is_some() {
            return None;
        }
        if session.cancel.take() {
            self.finish = Some(FinishReason::Cancelled);
        } else if self.sampled == self.params.max_tokens
            || (self.sampled > 0 && session.state_tokens.len() + self.pending.len() > session.state.max_len())
        {
            self.finish = Some(FinishReason::Length);
        }
        self.finish.is_none().then_some(self.pending.as_slice())
    }

    /// How many pending tokens the next step feeds, with `held` tokens in the state: all of them
    /// once the turn decodes; of the prompt at most a chunk, and never past the snapshot point.
    pub(super) fn piece_len(&self, held: usize) -> usize {
        if self.sampled > 0 {
            return self.pending.len();
        }
        let n = self.pending.len().min(self.prefill_chunk);
        match self.snapshot_at {
            Some(point) if point > held => n.min(point - held),
            _ => n,
        }
    }

    /// Samples from the logits that followed the pending tokens and streams the result. The
    /// pending tokens were fed, so a turn that fails here is over: it cannot take the step again.
    pub(super) fn accept(&mut self, logits: &[f32], emit: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        let result = self.sample_and_stream(logits, None, emit);
        if result.is_err() {
            self.finish.get_or_insert(FinishReason::Cancelled);
        }
        result.map(|_| ())
    }

    /// For a turn that decodes speculatively and has just sampled a token (its only pending
    /// one): drafts to verify after it, or `None` when this step decodes one token as usual (the
    /// adaptive count is at zero, or no draft could be used before the turn's token budget or
    /// the context runs out).
    pub(super) fn drafts(&mut self, model: &Model, state: &mut SessionState) -> Result<Option<Drafts>> {
        let Some(speculator) = self.speculator.as_mut() else { return Ok(None) };
        if self.sampled == 0 || self.finish.is_some() || self.media.is_some() || self.pending.len() != 1 {
            return Ok(None);
        }
        // A pass of 1 + k tokens gives up to k + 1 tokens, and must fit in the context.
        let room = (self.params.max_tokens.saturating_sub(self.sampled + 1))
            .min(state.max_len().saturating_sub(state.len() + 1));
        if room == 0 {
            return Ok(None);
        }
        let produced = self.tokens.len() - 1;
        let drafts = speculator.draft(model, state, self.pending[0], &mut self.sampler, room, produced)?;
        Ok((!drafts.is_empty()).then_some(drafts))
    }

    /// Takes the rows of a verification pass of `drafts` after the pending token (`rows[i]`
    /// follows the pass's token `i`): samples each row as plain decoding would, keeps a draft
    /// while it is what was chosen, and stops at the first that is not, or where the turn ends
    /// or must feed tokens of its own (a thought closed on budget). Returns how many of the
    /// pass's tokens the state keeps, whatever the outcome: the caller must
    /// [`keep_verified`](Model::keep_verified) them.
    pub(super) fn accept_verified(
        &mut self,
        rows: &[f32],
        drafts: &Drafts,
        emit: &mut dyn FnMut(Event<'_>),
    ) -> (usize, Result<()>) {
        let vocab = self.lm.model.vocab_size();
        let mut kept = 0;
        let mut outcome = Ok(());
        for (i, row) in rows.chunks_exact(vocab).enumerate() {
            kept = i + 1;
            let token = match self.sample_and_stream(row, Some((drafts, i)), emit) {
                Ok(token) => token,
                Err(e) => {
                    self.finish.get_or_insert(FinishReason::Cancelled);
                    outcome = Err(e);
                    break;
                }
            };
            let goes_on = drafts.get(i) == Some(token)
                && self.finish.is_none()
                && self.pending == [token]
                && self.sampled < self.params.max_tokens;
            if !goes_on {
                break;
            }
        }
        if let Some(speculator) = &mut self.speculator {
            speculator.verified(drafts, kept - 1);
        }
        (kept, outcome)
    }

    /// The next token from `logits`: as plain decoding samples it, or, at draft `i` of a
    /// speculative step that samples, by the speculative sampling rule (same distribution).
    fn choose(&mut self, logits: &[f32], draft: Option<(&Drafts, usize)>) -> Result<u32> {
        let logits = crate::generate::finite(logits)?;
        let no_token = || {
            Error::InvalidInput(
                "the constraint allows no token that the sampling parameters leave possible \
                 (is every allowed token banned by a logit bias?)"
                    .into(),
            )
        };
        let mask = match self.guided.as_mut().filter(|g| g.active) {
            Some(guided) => Some(guided.text.mask()?.as_slice()),
            None => None,
        };
        let sampling = self.sampler.params().temperature > 0.0;
        match (draft.filter(|&(d, i)| sampling && d.get(i).is_some()), mask) {
            (Some((drafts, i)), mask) => {
                let p = match mask {
                    Some(mask) => self.sampler.distribution_masked(logits, mask).ok_or_else(no_token)?,
                    None => self.sampler.distribution(logits),
                };
                Ok(drafts.choose(i, &p, &mut self.sampler))
            }
            (None, Some(mask)) => self.sampler.sample_masked(logits, mask).ok_or_else(no_token),
            (None, None) => Ok(self.sampler.sample(logits)),
        }
    }

    /// Chooses the next token (see [`choose`](Self::choose)), then streams it and decides what
    /// follows; returns the token.
    fn sample_and_stream(
        &mut self,
        logits: &[f32],
        draft: Option<(&Drafts, usize)>,
        emit: &mut dyn FnMut(Event<'_>),
    ) -> Result<u32> {
        let lm = self.lm.clone();
        let next = self.choose(logits, draft)?;
        self.first_token_at.get_or_insert_with(Instant::now);
        self.sampled += 1;
        self.tokens.push(next);
        if let Some(k) = self.params.logprobs {
            let info = token_logprob(&lm.tokenizer, logits, next, k);
            emit(Event::Token(&info));
            self.logprobs.push(info);
        }
        if lm.stop_ids().contains(&next) {
            self.finish = Some(FinishReason::Stop);
            return Ok(next);
        }
        if let Some(guided) = self.guided.as_mut().filter(|g| g.active) {
            guided.text.consume(next)?;
        }
        self.sampler.accept(next);
        self.pending.clear();
        self.pending.push(next);
        let tokenizer = &lm.tokenizer;
        if self.out.in_thought() && Some(next) == self.markers.think_end {
            self.out.close_thought(emit)?;
            if let Some(guided) = &mut self.guided {
                // The answer starts where the template starts it, after a blank line.
                let start = &self.markers.answer_start;
                self.pending.extend_from_slice(start);
                self.tokens.extend_from_slice(start);
                self.sampler.observe_prompt(start);
                guided.active = true;
            }
        } else {
            if self.out.in_thought() {
                self.reasoning_tokens += 1;
            }
            if let Some(stop) = self.out.push_token(tokenizer, next, emit)? {
                self.stop_string = Some(stop);
                self.finish = Some(FinishReason::StopString);
                return Ok(next);
            }
            if self.out.in_thought()
                && self.params.max_thinking_tokens.is_some_and(|max| self.reasoning_tokens >= max)
            {
                self.close_thought_now(emit)?;
            }
        }
        if self.params.repetition_guard.is_some_and(|g| g.is_looping(&self.tokens)) {
            self.finish = Some(FinishReason::Repetition);
        } else if self.guided.as_ref().is_some_and(|g| g.active && g.text.is_complete()) {
            // Nothing can follow but a stop token: no need to run the model for it.
            self.finish = Some(FinishReason::Stop);
        }
        Ok(next)
    }

    /// Ends the thought on budget: feeds what the template puts between a thought and the answer.
    pub(super) fn close_thought_now(&mut self, emit: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        let close = if self.out.ends_with_newline() {
            &self.markers.close_after_newline
        } else {
            &self.markers.close
        };
        self.pending.extend_from_slice(close);
        self.tokens.extend_from_slice(close);
        self.sampler.observe_prompt(close);
        if let Some(guided) = &mut self.guided {
            guided.active = true;
        }
        self.out.close_thought(emit)
    }

    /// Ends the turn (cancelling it if it was still going) and returns its reply, which is
    /// also streamed as [`Event::Done`].
    pub fn finish(mut self, on_event: &mut dyn FnMut(Event<'_>)) -> Reply {
        let finish = *self.finish.get_or_insert(FinishReason::Cancelled);
        if finish != FinishReason::StopString {
            // Only a tokenizer without these ids could fail here; the text so far stands.
            let _ = self.out.finish(on_event);
        }
        let now = Instant::now();
        let first = self.first_token_at.unwrap_or(now);
        let (reasoning, content) = self.out.into_texts();
        let reply = Reply {
            content,
            reasoning,
            tokens: self.tokens,
            logprobs: self.logprobs,
            finish_reason: finish,
            stop_string: self.stop_string,
            usage: Usage {
                prompt_tokens: self.prompt_len,
                cached_prompt_tokens: self.cached,
                completion_tokens: self.sampled,
                reasoning_tokens: self.reasoning_tokens,
                time_to_first_token: first - self.start,
                constraint_time: self.guided.as_ref().map_or(Duration::ZERO, |g| g.text.mask_time().0),
                decode_time: now - first,
                speculation: self.speculator.as_ref().map(|s| s.stats().clone()),
            },
        };
        on_event(Event::Done(&reply));
        reply
    }
}

/// The part of a prompt with media that a turn still has to feed.
pub(super) struct PendingMedia {
    pub(super) prompt: Prompt,
    pub(super) encoded: EncodedMedia,
}

/// Feeds `pending`: the rest of `m`'s prompt after what `state` holds (with its positions and
/// embeddings), then anything the turn appended to it (the tokens closing a thought when the
/// thinking budget is 0, at text positions). Returns the last logits; checks everything it can
/// before the state changes.
pub(super) fn feed_prompt_rest<'s>(
    model: &Model,
    state: &'s mut SessionState,
    m: &PendingMedia,
    pending: &[u32],
) -> Result<&'s [f32]> {
    let start = state.len();
    let rest = m.prompt.ids().get(start..).filter(|rest| pending.starts_with(rest)).ok_or_else(|| {
        Error::InvalidInput("the turn's pending tokens are not the rest of its prompt".into())
    })?;
    if start + pending.len() > state.max_len() {
        return Err(Error::InvalidInput(format!(
            "{} tokens after the {start} already in context exceed the context length of {}",
            pending.len(),
            state.max_len()
        )));
    }
    let extra = &pending[rest.len()..];
    let piece = m.prompt.piece(&m.encoded, start..m.prompt.len())?;
    if extra.is_empty() {
        return model.forward_embedded(state, &piece.input(), Logits::Last);
    }
    model.forward_embedded(state, &piece.input(), Logits::None)?;
    model.forward(state, extra, Logits::Last)
}

/// The log-probability (under the model's raw distribution, before sampling transforms) of a
/// sampled token and of the `top` most likely tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    /// The token's text (lossy where the token is part of a multi-byte character).
    pub text: String,
    pub logprob: f32,
    /// The most likely tokens, best first: (id, text, logprob).
    pub top: Vec<(u32, String, f32)>,
}

fn token_logprob(tokenizer: &Tokenizer, logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    let text = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
    let mut best: Vec<u32> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == top && l <= logits[best[top - 1] as usize] {
                continue;
            }
            let at = best.partition_point(|&j| logits[j as usize] >= l);
            best.insert(at, i as u32);
            best.truncate(top);
        }
    }
    TokenLogprob {
        id,
        text: text(id),
        logprob: logits[id as usize] - log_z,
        top: best.into_iter().map(|j| (j, text(j), logits[j as usize] - log_z)).collect(),
    }
}
