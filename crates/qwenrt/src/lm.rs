//! A language model folder as a whole: decoder weights, tokenizer, chat template and
//! generation defaults, loaded together from a Hugging Face model folder, plus the vision side of
//! a multimodal checkpoint (see [`crate::vision`]).

use std::path::Path;
use std::sync::OnceLock;

use crate::chat::message_media;
use crate::chat::{ChatTemplate, Message, RenderRequest};
use crate::config::ModelConfig;
use crate::constraint::{Constraint, Guide, GuidedText, ToolCallFormat};
use crate::error::{Error, Result};
use crate::generate::GenerationConfig;
use crate::linear::{LoadOptions, WeightDtype};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::vision::{ImageInput, Prompt, VideoInput, Vision};
use crate::weights::WeightStore;

pub struct LanguageModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// `None` when the folder has no chat template (then only raw prompts work).
    pub chat_template: Option<ChatTemplate>,
    pub generation_config: GenerationConfig,
    stop_ids: Vec<u32>,
    /// The vision tower and processors, or why there are none.
    vision: std::result::Result<Vision, String>,
    /// The token trie constrained turns share, built by the first one.
    guide: OnceLock<std::result::Result<Guide, String>>,
}

impl LanguageModel {
    /// Loads everything from a model folder: `config.json`, `*.safetensors`, `tokenizer.json`,
    /// the chat template (`chat_template.jinja` or `tokenizer_config.json`) and
    /// `generation_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, &LoadOptions::with_dtype(WeightDtype::F32))
    }

    /// [`LanguageModel::load`] with the weight precision (and a progress callback) of `options`.
    pub fn load_with(dir: &Path, options: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            });
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        // Check the cheap files first so a broken folder fails before the weights are read.
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"), config.family.pretokenizer())?;
        let chat_template = match ChatTemplate::from_model_dir(dir) {
            Ok(t) => Some(t),
            Err(crate::chat::ChatTemplateError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let generation_config = GenerationConfig::from_dir(dir)?;
        let store = WeightStore::open_dir(dir)?;
        let model = Model::from_store_with(config, &store, options)?;
        // The tower takes the decoder's precision; it is loaded on first use.
        let vision = Vision::from_dir(dir, &store, options.dtype, model.config().text.hidden_size)?;

        // Stop on every id of generation_config.json's eos list. Without that file, fall back
        // to config.json's eos and the ChatML end-of-turn token: a Qwen turn ends with
        // <|im_end|> even though config.json names <|endoftext|>.
        let mut stop_ids = generation_config.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default();
        if stop_ids.is_empty() {
            if let Some(eos) = &model.config().text.eos_token_id {
                if let Ok(ids) = serde_json::from_value::<crate::generate::IdOrIds>(eos.clone()) {
                    stop_ids = ids.to_vec();
                }
            }
            stop_ids.extend(tokenizer.token_id("<|im_end|>"));
        }
        stop_ids.dedup();
        Ok(LanguageModel {
            model,
            tokenizer,
            chat_template,
            generation_config,
            stop_ids,
            vision,
            guide: OnceLock::new(),
        })
    }

    /// Generation parameters from `generation_config.json` (sampling; thinking as the template
    /// decides), to adjust per turn.
    pub fn default_params(&self) -> crate::params::ChatParams {
        crate::params::ChatParams {
            sampling: self.generation_config.default_sampling(),
            ..Default::default()
        }
    }

    /// How this model writes tool calls: Qwen3.5's XML, or Qwen3's JSON.
    pub fn tool_call_format(&self) -> ToolCallFormat {
        self.model.config().family.tool_call_format()
    }

    /// Checks a constraint as a turn would before generating: a bad schema, regex, grammar or
    /// tool list is an error naming the problem.
    pub fn check_constraint(&self, constraint: &Constraint) -> Result<()> {
        self.compile_constraint(constraint).map(drop)
    }

    pub(crate) fn compile_constraint(&self, constraint: &Constraint) -> Result<GuidedText> {
        let guide = self
            .guide
            .get_or_init(|| {
                Guide::new(&self.tokenizer, self.model.vocab_size(), &self.stop_ids)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::InvalidInput(e.clone()))?;
        guide.compile(constraint, self.tool_call_format())
    }

    /// Token ids that end generation.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Renders `messages` with the model's chat template.
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            Error::InvalidInput(
                "this model folder has no chat template (chat_template.jinja or \
                 tokenizer_config.json); use a raw prompt"
                    .into(),
            )
        })?;
        let mut req = RenderRequest::new(messages);
        req.add_generation_prompt = add_generation_prompt;
        req.enable_thinking = enable_thinking;
        Ok(template.render(&req)?)
    }

    /// Tokenizes text as is; special tokens written in it (`<|im_start|>` …) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text)?)
    }

    /// [`encode`](Self::encode), refusing a text of more than `limit` tokens as soon as that is
    /// known (see [`Tokenizer::encode_within`](crate::tokenizer::Tokenizer::encode_within)).
    pub fn encode_within(&self, text: &str, limit: usize) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode_within(text, limit)?)
    }

    /// The vision side of a multimodal checkpoint; an error saying why for a text-only one.
    pub fn vision(&self) -> Result<&Vision> {
        self.vision.as_ref().map_err(|reason| Error::InvalidInput(reason.clone()))
    }

    pub fn has_vision(&self) -> bool {
        self.vision.is_ok()
    }

    /// Renders `messages` with the chat template and tokenizes them; with image or video parts,
    /// expands their placeholders and computes the positions (the pixels are only read when a
    /// turn feeds them to the tower).
    pub fn prompt(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<Prompt> {
        let text = self.render_chat(messages, add_generation_prompt, enable_thinking)?;
        let (images, videos) = message_media(messages)?;
        self.encode_prompt(&text, &images, &videos)
    }

    /// Tokenizes `text`, in which each image and video is one
    /// `<|vision_start|><|image_pad|><|vision_end|>` (or `<|video_pad|>`) as the chat template
    /// writes them, in the order of `images` and `videos`. Without attachments this is
    /// [`encode`](Self::encode).
    pub fn encode_prompt(&self, text: &str, images: &[ImageInput], videos: &[VideoInput]) -> Result<Prompt> {
        self.encode_prompt_within(text, images, videos, usize::MAX)
    }

    /// [`encode_prompt`](Self::encode_prompt), refusing a text of more than `limit` tokens
    /// before the pictures' tokens are added.
    pub fn encode_prompt_within(
        &self,
        text: &str,
        images: &[ImageInput],
        videos: &[VideoInput],
        limit: usize,
    ) -> Result<Prompt> {
        let ids = self.encode_within(text, limit)?;
        if images.is_empty() && videos.is_empty() {
            return Ok(Prompt::text(ids));
        }
        self.vision()?.expand(&ids, images, videos, |t| self.encode(t))
    }
}
