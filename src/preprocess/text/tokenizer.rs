//! `open_clip.tokenize` in Rust: open_clip's cleaning ([`clean_text`]), its pre-tokenizer regex,
//! the byte-level mapping and CLIP's BPE (from a Hugging Face `tokenizer.json`), then
//! `[sot] + ids + [eot]`, truncated to the context length with the last id forced to eot and
//! padded with zeros.
//!
//! Only the file's vocabulary and merges are used: its normalizer, pre-tokenizer and added-token
//! matching differ from open_clip (no ftfy, no html unescaping, other special-token spellings).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Model;
use tokenizers::models::bpe::{BPE, Vocab};

use super::clean::clean_text;
use super::tables_unicode::{ICASE_LITERALS, TOKEN_CLASS};

/// Vocabulary size of every OpenAI/open_clip CLIP text tower.
pub const CLIP_VOCAB_SIZE: usize = 49408;

/// open_clip's spellings of the special tokens; in user text they are special tokens.
const SOT_TEXT: &str = "<start_of_text>";
const EOT_TEXT: &str = "<end_of_text>";

/// Upper bound on the per-word BPE cache of the model (entries).
const BPE_CACHE_CAPACITY: usize = 50_000;

/// Why a tokenizer file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer file {} is not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("tokenizer file {}: model type is {found}, expected a BPE model", path.display())]
    NotBpe { path: PathBuf, found: String },
    #[error("tokenizer file {}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error(
        "tokenizer file {}: vocabulary has {found} tokens, expected {expected} (CLIP)",
        path.display()
    )]
    VocabSize {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error(
        "tokenizer file {}: no {which} token (looked for <start_of_text>/<|startoftext|> style names \
         and the post-processor)",
        path.display()
    )]
    MissingSpecial { path: PathBuf, which: &'static str },
    #[error("tokenizer file {}: cannot build the BPE model: {message}", path.display())]
    Bpe { path: PathBuf, message: String },
    #[error("context length must be at least 1, got {0}")]
    ContextLength(usize),
}

/// The ids of one text, as `open_clip.tokenize` returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Exactly `context_length` ids: sot, tokens, eot, then zeros.
    pub ids: Vec<i64>,
    /// Whether tokens were cut to fit the context length.
    pub truncated: bool,
    /// Number of tokens including sot and eot, before truncation.
    pub token_count: usize,
}

/// open_clip's CLIP tokenizer over a Hugging Face `tokenizer.json` (BPE) file. Send + Sync.
pub struct ClipTokenizer {
    bpe: BPE,
    sot: u32,
    eot: u32,
    vocab_size: usize,
    context_length: usize,
    byte_encoder: [char; 256],
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .field("vocab_size", &self.vocab_size)
            .field("context_length", &self.context_length)
            .finish_non_exhaustive()
    }
}

/// open_clip's `bytes_to_unicode`.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            u32::from(b)
        } else {
            n += 1;
            255 + n
        };
        table[usize::from(b)] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

fn normalized_name(token: &str) -> String {
    token
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn as_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

impl ClipTokenizer {
    /// Loads a CLIP-style `tokenizer.json` (BPE, 49408 tokens, `</w>` word suffix).
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self, TokenizerError> {
        let invalid = |problem: String| TokenizerError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        if context_length == 0 {
            return Err(TokenizerError::ContextLength(context_length));
        }
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let model = doc
            .get("model")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("no \"model\" object".into()))?;
        let model_type = model.get("type").and_then(Value::as_str);
        if model_type.is_some_and(|t| t != "BPE")
            || model_type.is_none() && !model.contains_key("merges")
        {
            return Err(TokenizerError::NotBpe {
                path: path.to_path_buf(),
                found: model_type.unwrap_or("(none)").to_string(),
            });
        }
        let vocab_obj = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("model has no \"vocab\" object".into()))?;
        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(vocab_obj.len());
        for (tok, id) in vocab_obj {
            let id = as_id(id)
                .ok_or_else(|| invalid(format!("vocab id of {tok:?} is not an integer")))?;
            vocab.insert(tok.clone(), id);
        }
        let merges_val = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("model has no \"merges\" array".into()))?;
        let mut merges = Vec::with_capacity(merges_val.len());
        for (i, m) in merges_val.iter().enumerate() {
            let pair = match m {
                Value::String(s) => {
                    let mut parts = s.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => Some((a.to_string(), b.to_string())),
                        _ => None,
                    }
                }
                Value::Array(a) => match a.as_slice() {
                    [Value::String(x), Value::String(y)] => Some((x.clone(), y.clone())),
                    _ => None,
                },
                _ => None,
            };
            merges.push(pair.ok_or_else(|| invalid(format!("merge #{i} is malformed: {m}")))?);
        }

        // all ids: model vocab and added tokens
        let mut names: HashMap<u32, String> = vocab.iter().map(|(t, &i)| (i, t.clone())).collect();
        let mut special_names: Vec<(String, u32)> = Vec::new();
        if let Some(added) = doc.get("added_tokens").and_then(Value::as_array) {
            for t in added {
                let content = t.get("content").and_then(Value::as_str);
                let id = t.get("id").and_then(as_id);
                if let (Some(content), Some(id)) = (content, id) {
                    names.entry(id).or_insert_with(|| content.to_string());
                    special_names.push((content.to_string(), id));
                }
            }
        }
        let vocab_size = names.len();
        let max_id = names.keys().max().map_or(0, |&m| m as usize + 1);
        if vocab_size != CLIP_VOCAB_SIZE || max_id != CLIP_VOCAB_SIZE {
            return Err(TokenizerError::VocabSize {
                path: path.to_path_buf(),
                found: vocab_size.max(max_id),
                expected: CLIP_VOCAB_SIZE,
            });
        }

        let byte_encoder = bytes_to_unicode();
        for &c in &byte_encoder {
            for tok in [c.to_string(), format!("{c}</w>")] {
                if !vocab.contains_key(&tok) {
                    return Err(invalid(format!(
                        "vocabulary lacks the byte-level token {tok:?} (not a CLIP `</w>` BPE vocabulary)"
                    )));
                }
            }
        }

        let find_special = |want: &str| -> Option<u32> {
            special_names
                .iter()
                .find(|(n, _)| normalized_name(n) == want)
                .map(|&(_, id)| id)
                .or_else(|| {
                    let mut hits: Vec<u32> = vocab
                        .iter()
                        .filter(|(n, _)| n.starts_with('<') && normalized_name(n) == want)
                        .map(|(_, &id)| id)
                        .collect();
                    hits.sort_unstable();
                    hits.first().copied()
                })
        };
        let post = doc.get("post_processor");
        let post_id = |key: &str| -> Option<u32> {
            let p = post?;
            // RobertaProcessing / BertProcessing: "cls": [token, id], "sep": [token, id]
            if let Some(id) = p
                .get(key)
                .and_then(Value::as_array)
                .and_then(|a| a.get(1))
                .and_then(as_id)
            {
                return Some(id);
            }
            // TemplateProcessing: first / last special token of the single template
            let single = p.get("single")?.as_array()?;
            let pick = if key == "cls" {
                single.first()?
            } else {
                single.last()?
            };
            let name = pick.get("SpecialToken")?.get("id")?.as_str()?;
            let ids = p.get("special_tokens")?.get(name)?.get("ids")?.as_array()?;
            ids.first().and_then(as_id)
        };
        let sot = find_special("startoftext")
            .or_else(|| post_id("cls"))
            .ok_or_else(|| TokenizerError::MissingSpecial {
                path: path.to_path_buf(),
                which: "start-of-text",
            })?;
        let eot = find_special("endoftext")
            .or_else(|| post_id("sep"))
            .ok_or_else(|| TokenizerError::MissingSpecial {
                path: path.to_path_buf(),
                which: "end-of-text",
            })?;
        if sot == eot {
            return Err(invalid(format!(
                "start-of-text and end-of-text share the id {sot}"
            )));
        }

        super::clean::warm_up();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .end_of_word_suffix("</w>".to_string())
            .cache_capacity(BPE_CACHE_CAPACITY)
            .build()
            .map_err(|e| TokenizerError::Bpe {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self {
            bpe,
            sot,
            eot,
            vocab_size,
            context_length,
            byte_encoder,
        })
    }

    /// Id of the start-of-text token.
    pub fn sot_id(&self) -> i64 {
        i64::from(self.sot)
    }

    /// Id of the end-of-text token.
    pub fn eot_id(&self) -> i64 {
        i64::from(self.eot)
    }

    /// Number of ids in [`Tokenized::ids`].
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Number of tokens in the vocabulary (49408).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `open_clip.tokenize([text], context_length)[0]`, with truncation details.
    pub fn encode(&self, text: &str) -> Tokenized {
        let cleaned = clean_text(text);
        let mut tokens: Vec<u32> = Vec::with_capacity(self.context_length.max(16));
        tokens.push(self.sot);
        let mut word = String::new();
        for piece in split_pieces(&cleaned) {
            match piece {
                SOT_TEXT => tokens.push(self.sot),
                EOT_TEXT => tokens.push(self.eot),
                _ => {
                    word.clear();
                    word.extend(piece.bytes().map(|b| self.byte_encoder[usize::from(b)]));
                    if let Ok(toks) = self.bpe.tokenize(&word) {
                        tokens.extend(toks.iter().map(|t| t.id));
                    }
                }
            }
        }
        tokens.push(self.eot);
        let token_count = tokens.len();
        let truncated = token_count > self.context_length;
        if truncated {
            tokens.truncate(self.context_length);
            if let Some(last) = tokens.last_mut() {
                *last = self.eot;
            }
        }
        let mut ids: Vec<i64> = tokens.into_iter().map(i64::from).collect();
        ids.resize(self.context_length, 0);
        Tokenized {
            ids,
            truncated,
            token_count,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// open_clip's pre-tokenizer:
//   <start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// compiled by the `regex` module with IGNORECASE, applied with findall.
// ---------------------------------------------------------------------------------------------

const CLASS_LETTER: u8 = 1;
const CLASS_NUMBER: u8 = 2;
const CLASS_OTHER: u8 = 4;

fn token_class(c: char) -> u8 {
    let u = c as u32;
    match TOKEN_CLASS.binary_search_by(|&(lo, _)| lo.cmp(&u)) {
        Ok(i) => TOKEN_CLASS[i].1,
        Err(0) => 0,
        Err(i) => TOKEN_CLASS[i - 1].1,
    }
}

/// Whether `c` matches the pattern's literal character `lit` case-insensitively.
fn icase_eq(lit: char, c: char) -> bool {
    if lit == c {
        return true;
    }
    ICASE_LITERALS
        .iter()
        .find(|&&(l, _)| l == lit)
        .is_some_and(|(_, eq)| eq.contains(&(c as u32)))
}

/// Byte length of a case-insensitive match of `lit` at the start of `s`.
fn match_literal(s: &str, lit: &str) -> Option<usize> {
    let mut it = s.char_indices();
    for l in lit.chars() {
        let (_, c) = it.next()?;
        if !icase_eq(l, c) {
            return None;
        }
    }
    Some(it.next().map_or(s.len(), |(i, _)| i))
}

/// The pieces `regex.findall(pat, text)` returns, as slices of `text`.
fn split_pieces(text: &str) -> Vec<&str> {
    const LITERALS: [&str; 9] = [
        SOT_TEXT, EOT_TEXT, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
    ];
    let mut pieces = Vec::new();
    let mut pos = 0;
    'outer: while let Some(c) = text[pos..].chars().next() {
        let rest = &text[pos..];
        if c == '<' || c == '\'' {
            for lit in LITERALS {
                if let Some(len) = match_literal(rest, lit) {
                    pieces.push(&rest[..len]);
                    pos += len;
                    continue 'outer;
                }
            }
        }
        let class = token_class(c);
        let run = |mask: u8| {
            rest.char_indices()
                .find(|&(_, ch)| token_class(ch) & mask == 0)
                .map_or(rest.len(), |(i, _)| i)
        };
        let len = if class & CLASS_LETTER != 0 {
            run(CLASS_LETTER)
        } else if class & CLASS_NUMBER != 0 {
            c.len_utf8()
        } else if class & CLASS_OTHER != 0 {
            run(CLASS_OTHER)
        } else {
            pos += c.len_utf8();
            continue;
        };
        pieces.push(&rest[..len]);
        pos += len;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizer() {
        assert_eq!(
            split_pieces("it's a <start_of_text>dog's 42 life!!"),
            vec![
                "it",
                "'s",
                "a",
                "<start_of_text>",
                "dog",
                "'s",
                "4",
                "2",
                "life",
                "!!"
            ]
        );
        assert_eq!(split_pieces("<|endoftext|>"), vec!["<|", "endoftext", "|>"]);
        assert_eq!(split_pieces("'\u{17f}"), vec!["'\u{17f}"]);
        assert_eq!(split_pieces("a\u{345}b"), vec!["a", "b"]);
        assert_eq!(split_pieces(""), Vec::<&str>::new());
    }

    #[test]
    fn byte_encoder_matches_open_clip() {
        let t = bytes_to_unicode();
        assert_eq!(t[usize::from(b'a')], 'a');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[usize::from(b' ')], '\u{120}');
        assert_eq!(t[0xAD], '\u{143}');
    }

    #[test]
    fn send_sync() {
        fn check<T: Send + Sync>() {}
        check::<ClipTokenizer>();
    }
}
