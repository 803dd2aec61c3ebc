//! Shape checks shared by everything that reads batches of SAE latents.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Elements per piece when a row is processed in pieces, so that a wide SAE (1M latents) never
/// needs more than this many f64 values on the device at once (128 MiB).
const MAX_PIECE_ELEMENTS: usize = 1 << 24;

/// `acts` as a `(batch, seq, width)` f32 tensor, after checking it against the rows' valid
/// lengths: a `(seq, width)` tensor is one row; `lengths[b] ≤ seq` for every row.
pub(crate) fn as_batch(acts: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let acts = match acts.rank() {
        2 => acts.unsqueeze(0)?,
        3 => acts.clone(),
        r => {
            return Err(Error::Invalid(format!(
                "latents must be (seq, width) or (batch, seq, width), found rank {r} {:?}",
                acts.dims()
            )))
        }
    };
    let (batch, seq, _) = acts.dims3()?;
    if lengths.len() != batch {
        return Err(Error::Invalid(format!(
            "{} row lengths given for a batch of {batch} rows",
            lengths.len()
        )));
    }
    if let Some(&len) = lengths.iter().find(|&&len| len > seq) {
        return Err(Error::Invalid(format!(
            "row length {len} exceeds the padded length {seq}"
        )));
    }
    Ok(acts.to_dtype(DType::F32)?)
}

/// How many tokens of a `width`-wide row to process at once.
pub(crate) fn tokens_per_piece(width: usize) -> usize {
    (MAX_PIECE_ELEMENTS / width.max(1)).max(1)
}
