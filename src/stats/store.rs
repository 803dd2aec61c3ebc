//! Exact on-disk storage for statistics: numeric arrays as safetensors tensors, and a JSON header
//! (counts, provenance) in the safetensors metadata under one key.
//!
//! Arrays are not written as JSON numbers because serde_json's default parser may return a float
//! one ulp away from the one written, and merged sums must survive a round trip unchanged.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One array to store.
pub(crate) enum Column<'a> {
    /// 64-bit floats.
    F64(&'a [f64]),
    /// 64-bit unsigned integers.
    U64(&'a [u64]),
    /// 32-bit unsigned integers.
    U32(&'a [u32]),
}

impl Column<'_> {
    fn dtype_and_bytes(&self) -> (Dtype, usize, Vec<u8>) {
        match self {
            Column::F64(v) => (
                Dtype::F64,
                v.len(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Column::U64(v) => (
                Dtype::U64,
                v.len(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Column::U32(v) => (
                Dtype::U32,
                v.len(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        }
    }
}

/// Writes `columns` and `header` (as JSON under metadata key `header_key`) to `path`.
pub(crate) fn write(
    path: &Path,
    header_key: &str,
    header: &impl Serialize,
    columns: &[(&str, Column)],
) -> Result<()> {
    let header_json = serde_json::to_string(header)
        .map_err(|e| Error::Invalid(format!("cannot serialise {header_key}: {e}")))?;
    let encoded: Vec<(&str, Dtype, usize, Vec<u8>)> = columns
        .iter()
        .map(|(name, column)| {
            let (dtype, len, bytes) = column.dtype_and_bytes();
            (*name, dtype, len, bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, dtype, len, bytes)| {
            let view = TensorView::new(*dtype, vec![*len], bytes)
                .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
            Ok((*name, view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([(header_key.to_string(), header_json)]);
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// The largest safetensors header [`read_header`] reads (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The JSON header under metadata key `key` of the file at `path`, reading only the file's
/// safetensors header, not its arrays: cheap enough to check many large files before any is read.
pub(crate) fn read_header<T: DeserializeOwned>(path: &Path, key: &str) -> Result<T> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "__metadata__", default)]
        metadata: Option<HashMap<String, String>>,
    }
    let bad = |found: String| Error::format(path, "file", "a safetensors file", found);
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if size < 8 {
        return Err(bad(format!("{size} bytes")));
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES || n > size - 8 {
        return Err(bad(format!("a {n}-byte header in a {size}-byte file")));
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).map_err(|e| Error::io(path, e))?;
    let raw: Raw = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
    parse_header(path, key, raw.metadata.as_ref())
}

/// The JSON header under `key` in a file's safetensors metadata.
fn parse_header<T: DeserializeOwned>(
    path: &Path,
    key: &str,
    metadata: Option<&HashMap<String, String>>,
) -> Result<T> {
    let json = metadata
        .and_then(|m| m.get(key))
        .ok_or_else(|| Error::missing(path, format!("metadata key `{key}`")))?;
    serde_json::from_str(json)
        .map_err(|e| Error::format(path, key, "the header this version writes", e.to_string()))
}

/// A stored file, read into memory.
pub(crate) struct StoredFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl StoredFile {
    /// Reads `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let file = StoredFile {
            path: path.to_path_buf(),
            bytes,
        };
        file.parsed()?;
        Ok(file)
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| Error::format(&self.path, "file", "a safetensors file", e.to_string()))
    }

    /// The JSON header stored under metadata key `key`.
    pub(crate) fn header<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes)
            .map_err(|e| Error::format(&self.path, "file", "a safetensors file", e.to_string()))?;
        parse_header(&self.path, key, metadata.metadata().as_ref())
    }

    fn column(&self, name: &str, dtype: Dtype, len: usize) -> Result<Vec<u8>> {
        let tensors = self.parsed()?;
        let view = tensors
            .tensor(name)
            .map_err(|_| Error::missing(&self.path, format!("tensor `{name}`")))?;
        if view.dtype() != dtype || view.shape() != [len] {
            return Err(Error::format(
                &self.path,
                name,
                format!("{dtype:?} [{len}]"),
                format!("{:?} {:?}", view.dtype(), view.shape()),
            ));
        }
        Ok(view.data().to_vec())
    }

    /// The f64 array `name`, which must hold `len` values.
    pub(crate) fn f64s(&self, name: &str, len: usize) -> Result<Vec<f64>> {
        let bytes = self.column(name, Dtype::F64, len)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")))
            .collect())
    }

    /// The u64 array `name`, which must hold `len` values.
    pub(crate) fn u64s(&self, name: &str, len: usize) -> Result<Vec<u64>> {
        let bytes = self.column(name, Dtype::U64, len)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte chunk")))
            .collect())
    }

    /// The u32 array `name`, which must hold `len` values.
    pub(crate) fn u32s(&self, name: &str, len: usize) -> Result<Vec<u32>> {
        let bytes = self.column(name, Dtype::U32, len)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4-byte chunk")))
            .collect())
    }
}
