//! Documents → fixed-length token rows: the scoring rows of guardrail fitting ([`build_rows`],
//! [`equalize`]; §1.2 of the spec) and the plain token stream of SAE training ([`token_rows`]).
//!
//! Scoring rows ([`build_rows`]): keep documents longer than [`MIN_DOC_CHARS`] characters;
//! optionally draw a seeded sample of them; join with the EOS token's text; cut into
//! [`TOKENIZE_CHUNKS`] equal character chunks and tokenise each (BOS prepended where the tokenizer
//! adds one, as Gemma's does); concatenate; cut into rows of `ctx` tokens (the tail is dropped);
//! set position 0 of every row to BOS; shuffle the rows with the seed. [`equalize`] then keeps the
//! same number of forget and retain rows, scaled by the data fraction.
//!
//! SAE rows ([`token_rows`]): every non-blank document tokenised without BOS and followed by EOS,
//! the stream cut into rows of exactly `ctx` tokens, in order.

use super::SplitMix64;
use crate::model::Tokenizer;
use crate::{Error, Result};

/// Documents of at most this many characters are dropped (the reference's filter is `len > 50`).
pub const MIN_DOC_CHARS: usize = 50;
/// The reference tokenises the joined corpus in this many character chunks.
pub const TOKENIZE_CHUNKS: usize = 20;
/// The reference samples at most this many forget documents.
pub const DEFAULT_MAX_DOCS: usize = 1024;
/// The reference's row-count cap before the data fraction.
pub const DEFAULT_MAX_ROWS: usize = 1024;

/// How [`build_rows`] turns documents into rows.
#[derive(Debug, Clone)]
pub struct RowOptions {
    /// Tokens per row (the reference: 1024).
    pub ctx: usize,
    /// Seed of document sampling and row shuffling.
    pub seed: u64,
    /// Sample at most this many documents (forget corpus: 1024); `None` keeps all, in order.
    pub max_docs: Option<usize>,
}

/// Cuts a token stream into rows of `ctx` tokens (dropping the tail), sets position 0 of every row
/// to `bos` when there is one, and shuffles the rows with `seed`.
pub fn rows_from_tokens(tokens: &[u32], ctx: usize, bos: Option<u32>, seed: u64) -> Vec<Vec<u32>> {
    let mut rows: Vec<Vec<u32>> = tokens
        .chunks_exact(ctx.max(1))
        .map(|r| {
            let mut r = r.to_vec();
            if let Some(b) = bos {
                r[0] = b;
            }
            r
        })
        .collect();
    let n = rows.len();
    SplitMix64::new(seed).sample(&mut rows, n);
    rows
}

/// The reference's scoring rows from documents (see the module documentation).
pub fn build_rows(
    tokenizer: &Tokenizer,
    documents: &[String],
    opts: &RowOptions,
) -> Result<Vec<Vec<u32>>> {
    let mut docs: Vec<&String> = documents
        .iter()
        .filter(|d| d.chars().count() > MIN_DOC_CHARS)
        .collect();
    let mut rng = SplitMix64::new(opts.seed);
    if let Some(k) = opts.max_docs {
        rng.sample(&mut docs, k);
    }
    let eos = tokenizer
        .eos_id()
        .map(|e| tokenizer.token_str(e))
        .unwrap_or_default();
    let joined: Vec<char> = docs
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(&eos)
        .chars()
        .collect();
    let chunk = joined.len().div_ceil(TOKENIZE_CHUNKS).max(1);
    let mut tokens = Vec::new();
    for piece in joined.chunks(chunk) {
        let text: String = piece.iter().collect();
        tokens.extend(tokenizer.encode(&text, tokenizer.adds_bos())?);
    }
    Ok(rows_from_tokens(
        &tokens,
        opts.ctx,
        tokenizer.bos_id(),
        rng.next_u64(),
    ))
}

/// Keeps the first `min(max_rows, |forget|, |retain|) · fraction/100` rows of both corpora (at
/// least one), as the reference does with `dataset_fraction`.
pub fn equalize(
    forget: &mut Vec<Vec<u32>>,
    retain: &mut Vec<Vec<u32>>,
    max_rows: usize,
    fraction_percent: f64,
) -> Result<usize> {
    if forget.is_empty() || retain.is_empty() {
        return Err(Error::Invalid(format!(
            "need rows in both corpora, have {} forget and {} retain (corpora shorter than one row?)",
            forget.len(),
            retain.len()
        )));
    }
    let n = max_rows.min(forget.len()).min(retain.len());
    let n = ((n as f64 * fraction_percent / 100.0).floor() as usize).max(1);
    forget.truncate(n);
    retain.truncate(n);
    Ok(n)
}

/// SAE training rows: each non-blank document of `docs` tokenised without BOS and followed by EOS
/// (when the tokenizer has one), the stream cut into rows of exactly `ctx` tokens; the incomplete
/// tail is dropped. A tokenizer that adds BOS (Gemma's: the model is off its distribution
/// without one) starts every row with BOS, then `ctx − 1` tokens of the stream.
pub fn token_rows(tokenizer: &Tokenizer, docs: &[String], ctx: usize) -> Result<Vec<Vec<u32>>> {
    if ctx < 2 {
        return Err(Error::out_of_range("context", ctx, "at least 2 tokens"));
    }
    let mut stream = Vec::new();
    for d in docs.iter().filter(|d| !d.trim().is_empty()) {
        stream.extend(tokenizer.encode(d, false)?);
        stream.extend(tokenizer.eos_id());
    }
    Ok(match tokenizer.leading_bos() {
        Some(bos) => stream
            .chunks_exact(ctx - 1)
            .map(|c| std::iter::once(bos).chain(c.iter().copied()).collect())
            .collect(),
        None => stream.chunks_exact(ctx).map(<[u32]>::to_vec).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_bos_fixed_length_and_seeded_order() {
        let tokens: Vec<u32> = (10..45).collect();
        let rows = rows_from_tokens(&tokens, 8, Some(1), 3);
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.len() == 8 && r[0] == 1));
        let mut firsts: Vec<u32> = rows.iter().map(|r| r[1]).collect();
        assert_eq!(rows, rows_from_tokens(&tokens, 8, Some(1), 3));
        assert_ne!(rows, rows_from_tokens(&tokens, 8, Some(1), 4));
        firsts.sort();
        assert_eq!(firsts, vec![11, 19, 27, 35]);
    }

    #[test]
    fn equalize_takes_the_fraction_of_the_smaller() {
        let mut f = vec![vec![0u32]; 10];
        let mut r = vec![vec![0u32]; 4];
        assert_eq!(equalize(&mut f, &mut r, 1024, 50.0).unwrap(), 2);
        assert_eq!((f.len(), r.len()), (2, 2));
    }
}
