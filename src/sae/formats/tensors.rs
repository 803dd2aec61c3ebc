//! Reading tensors and JSON configs with errors that name the file and the field.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The tensors of one file, on the CPU, looked up by name and checked on the way out.
pub(crate) struct TensorFile {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// Every name the file held, sorted (for error messages after tensors were taken).
    names: Vec<String>,
}

impl TensorFile {
    /// Reads every tensor of a safetensors file.
    pub fn read_safetensors(path: &Path) -> Result<Self> {
        exists(path)?;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            Error::format(
                path,
                "safetensors",
                "a readable safetensors file",
                e.to_string(),
            )
        })?;
        Ok(Self::new(path, tensors))
    }

    fn new(path: &Path, tensors: HashMap<String, Tensor>) -> Self {
        let mut names: Vec<String> = tensors.keys().cloned().collect();
        names.sort();
        TensorFile {
            path: path.to_path_buf(),
            tensors,
            names,
        }
    }

    /// Reads every tensor of a `torch.save` checkpoint holding a dict (see [`super::torch_pt`]),
    /// with the dict's plain scalar entries beside.
    pub fn read_torch(path: &Path) -> Result<(Self, BTreeMap<String, super::pickle::Value>)> {
        exists(path)?;
        let file = super::torch_pt::read(path)?;
        Ok((Self::new(path, file.tensors), file.scalars))
    }

    /// Reads every array of an (uncompressed) NumPy `.npz` archive.
    pub fn read_npz(path: &Path) -> Result<Self> {
        exists(path)?;
        let tensors = Tensor::read_npz(path)
            .map_err(|e| {
                Error::format(
                    path,
                    "npz",
                    "an uncompressed NumPy .npz archive",
                    e.to_string(),
                )
            })?
            .into_iter()
            .collect();
        Ok(Self::new(path, tensors))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored name matching `name` exactly, else case-insensitively.
    fn key(&self, name: &str) -> Option<String> {
        if self.tensors.contains_key(name) {
            return Some(name.to_string());
        }
        self.tensors
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .cloned()
    }

    /// Whether a tensor named `name` (case-insensitively) is present.
    pub fn has(&self, name: &str) -> bool {
        self.key(name).is_some()
    }

    /// The 1-D length of tensor `name`, if present and 1-D (used to infer dimensions).
    pub fn len_1d(&self, name: &str) -> Option<usize> {
        let t = &self.tensors[&self.key(name)?];
        match t.dims() {
            [n] => Some(*n),
            _ => None,
        }
    }

    /// Removes the first of `names` that is present (matched case-insensitively).
    pub fn take_opt(&mut self, names: &[&str]) -> Option<(String, Tensor)> {
        names.iter().find_map(|n| {
            let k = self.key(n)?;
            let t = self.tensors.remove(&k)?;
            Some((k, t))
        })
    }

    /// Removes the first of `names` that is present; a missing tensor is an error naming them all.
    pub fn take(&mut self, names: &[&str]) -> Result<(String, Tensor)> {
        self.take_opt(names).ok_or_else(|| {
            Error::missing(
                &self.path,
                format!(
                    "tensor `{}` (file holds {:?})",
                    names.join("` or `"),
                    self.names
                ),
            )
        })
    }

    /// A 1-D tensor of length `n`, as checked f32.
    pub fn vector(&mut self, names: &[&str], n: usize) -> Result<Tensor> {
        let (name, t) = self.take(names)?;
        if t.dims() != [n] {
            return Err(shape_error(&self.path, &name, &[n], t.dims()));
        }
        checked_f32(&self.path, &name, &t)
    }

    /// An optional 1-D tensor of length `n`, as checked f32.
    pub fn vector_opt(&mut self, names: &[&str], n: usize) -> Result<Option<Tensor>> {
        if !names.iter().any(|n| self.has(n)) {
            return Ok(None);
        }
        self.vector(names, n).map(Some)
    }

    /// A matrix as checked f32 of shape `(rows, cols)`. A stored `(cols, rows)` matrix is
    /// transposed (orientation by shape); when `rows == cols` the stored layout is taken as is.
    pub fn matrix(&mut self, names: &[&str], rows: usize, cols: usize) -> Result<Tensor> {
        let (name, t) = self.take(names)?;
        let t = if t.dims() == [rows, cols] {
            t
        } else if t.dims() == [cols, rows] {
            t.t()?.contiguous()?
        } else {
            return Err(shape_error(&self.path, &name, &[rows, cols], t.dims()));
        };
        checked_f32(&self.path, &name, &t)
    }
}

/// A shape mismatch error for tensor `name` in `path`.
pub(crate) fn shape_error(path: &Path, name: &str, want: &[usize], got: &[usize]) -> Error {
    Error::format(
        path,
        format!("tensor `{name}`"),
        format!("shape {want:?}"),
        format!("shape {got:?}"),
    )
}

/// `t` as f32, refusing non-float dtypes and NaN or infinite values.
pub(crate) fn checked_f32(path: &Path, name: &str, t: &Tensor) -> Result<Tensor> {
    let field = || format!("tensor `{name}`");
    if !t.dtype().is_float() {
        return Err(Error::format(
            path,
            field(),
            "a floating-point dtype",
            format!("{:?}", t.dtype()),
        ));
    }
    let t = t.to_dtype(DType::F32)?;
    // x·0 is 0 for finite x and NaN otherwise, so one reduction finds any non-finite value.
    let probe = (&t * 0.0)?.sum_all()?.to_scalar::<f32>()?;
    if !probe.is_finite() {
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let (i, v) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
            .map(|(i, v)| (i, *v))
            .unwrap_or((0, f32::NAN));
        return Err(Error::format(
            path,
            field(),
            "finite values",
            format!("{v} at flat index {i}"),
        ));
    }
    Ok(t)
}

/// Whether a tensor is all ones (exactly).
pub(crate) fn all_ones(t: &Tensor) -> Result<bool> {
    let off = (t.to_dtype(DType::F32)? - 1.0)?.abs()?.max_all()?;
    Ok(off.to_scalar::<f32>()? == 0.0)
}

/// Whether a tensor is all zeros (exactly).
pub(crate) fn all_zeros(t: &Tensor) -> Result<bool> {
    let m = t.to_dtype(DType::F32)?.abs()?.max_all()?;
    Ok(m.to_scalar::<f32>()? == 0.0)
}

fn exists(path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::missing(path, "file"))
    }
}

/// Reads a JSON object from `path`.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    exists(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, "JSON", "valid JSON", e.to_string()))?;
    if !value.is_object() {
        return Err(Error::format(path, "JSON", "an object", value.to_string()));
    }
    Ok(value)
}

/// Typed access to the fields of a JSON config, with errors naming the file and key.
pub(crate) struct Json<'a> {
    pub path: &'a Path,
    pub value: &'a serde_json::Value,
}

impl<'a> Json<'a> {
    /// The first of `keys` present and not null.
    pub fn get<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &'a serde_json::Value)> {
        keys.iter().find_map(|k| {
            let v = self.value.get(*k)?;
            (!v.is_null()).then_some((*k, v))
        })
    }

    /// An unsigned integer field (floats with an integral value are accepted).
    pub fn usize_opt(&self, keys: &[&str]) -> Result<Option<usize>> {
        let Some((k, v)) = self.get(keys) else {
            return Ok(None);
        };
        let n = v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        });
        match n {
            Some(n) => Ok(Some(n as usize)),
            None => Err(Error::format(
                self.path,
                k,
                "a non-negative integer",
                v.to_string(),
            )),
        }
    }

    /// A required unsigned integer field.
    pub fn usize(&self, keys: &[&str]) -> Result<usize> {
        self.usize_opt(keys)?
            .ok_or_else(|| Error::missing(self.path, format!("field `{}`", keys.join("` or `"))))
    }

    /// A string field.
    pub fn str_opt(&self, keys: &[&str]) -> Result<Option<&'a str>> {
        match self.get(keys) {
            None => Ok(None),
            Some((_, serde_json::Value::String(s))) => Ok(Some(s)),
            Some((k, v)) => Err(Error::format(self.path, k, "a string", v.to_string())),
        }
    }

    /// A boolean field, `default` when absent.
    pub fn bool_or(&self, keys: &[&str], default: bool) -> Result<bool> {
        match self.get(keys) {
            None => Ok(default),
            Some((_, serde_json::Value::Bool(b))) => Ok(*b),
            Some((k, v)) => Err(Error::format(self.path, k, "true or false", v.to_string())),
        }
    }

    /// A number field.
    pub fn f64_opt(&self, keys: &[&str]) -> Result<Option<f64>> {
        match self.get(keys) {
            None => Ok(None),
            Some((k, v)) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::format(self.path, k, "a number", v.to_string())),
        }
    }
}
