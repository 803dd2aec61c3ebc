//! PyTorch checkpoints (`torch.save`, the zip format of torch ≥ 1.6), read without Python.
//!
//! The archive holds `{name}/data.pkl` (the object graph, read by [`super::pickle`], which runs
//! nothing), one member `{name}/data/{key}` per storage (raw little-endian elements), and the
//! records `{name}/version` and `{name}/byteorder` (torch ≥ 2.1 writes `little`; a big-endian
//! archive is refused). Each tensor is a strided view (offset, shape, strides) of a storage; the
//! view is honoured, whatever its strides, and checked to lie inside its storage.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::pickle::{self, PtDType, TensorRef, Value};
use crate::{Error, Result};

/// The top-level entries of a checkpoint that is a dict: its tensors, and its plain scalar
/// entries (ints, floats, strings, bools) by name. Other entries are ignored.
pub(crate) struct PtFile {
    /// Tensors by key, on the CPU in their stored dtype.
    pub tensors: HashMap<String, Tensor>,
    /// Scalar entries by key.
    pub scalars: BTreeMap<String, Value>,
}

/// Reads a `torch.save` zip checkpoint whose top-level object is a dict with string keys.
pub(crate) fn read(path: &Path) -> Result<PtFile> {
    let bad =
        |field: &str, expected: &str, found: String| Error::format(path, field, expected, found);
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = (&f).read(&mut magic).map_err(|e| Error::io(path, e))?;
    if n < 4 || &magic != b"PK\x03\x04" {
        return Err(bad(
            "(archive)",
            "a torch.save zip checkpoint (torch >= 1.6; older pickled checkpoints must be \
             re-saved)",
            format!("leading bytes {:02x?}", &magic[..n]),
        ));
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| bad("(archive)", "a readable zip archive", e.to_string()))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .map(|n| n.to_string())
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| Error::missing(path, "member `data.pkl` (not a torch.save checkpoint)"))?;
    let prefix = pkl
        .strip_suffix("data.pkl")
        .expect("found by suffix")
        .to_string();
    if let Some(order) = member(&mut zip, path, &format!("{prefix}byteorder"))? {
        if order.trim_ascii() != b"little" {
            return Err(bad(
                "byteorder",
                "little",
                String::from_utf8_lossy(&order).into_owned(),
            ));
        }
    }
    let data = member(&mut zip, path, &pkl)?.expect("listed member");
    let root = pickle::parse(&data).map_err(|e| {
        Error::format(
            path,
            format!("pickle `{pkl}`"),
            "only tensors and plain containers",
            e,
        )
    })?;
    let Value::Dict(entries) = root else {
        return Err(bad("pickle", "a dict of tensors", "another object".into()));
    };
    let mut out = PtFile {
        tensors: HashMap::new(),
        scalars: BTreeMap::new(),
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for (key, value) in entries {
        let Value::Str(key) = key else {
            return Err(bad("pickle", "string keys", format!("{key:?}")));
        };
        match value {
            Value::Tensor(t) => {
                let member_name = format!("{prefix}data/{}", t.storage.key);
                if !storages.contains_key(&t.storage.key) {
                    let bytes = member(&mut zip, path, &member_name)?
                        .ok_or_else(|| Error::missing(path, format!("storage `{member_name}`")))?;
                    storages.insert(t.storage.key.clone(), bytes);
                }
                let tensor = materialise(&t, &storages[&t.storage.key])
                    .map_err(|e| bad(&format!("tensor `{key}`"), "a view inside its storage", e))?;
                out.tensors.insert(key, tensor);
            }
            v @ (Value::Int(_) | Value::Float(_) | Value::Str(_) | Value::Bool(_)) => {
                out.scalars.insert(key, v);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The bytes of member `name`, or `None` when the archive has no such member.
fn member(
    zip: &mut zip::ZipArchive<std::fs::File>,
    path: &Path,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let mut entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => {
            return Err(Error::format(
                path,
                name,
                "a readable zip member",
                e.to_string(),
            ))
        }
    };
    let mut buf = Vec::with_capacity(entry.size().min(1 << 32) as usize);
    entry
        .read_to_end(&mut buf)
        .map_err(|e| Error::format(path, name, "a readable zip member", e.to_string()))?;
    Ok(Some(buf))
}

/// The tensor a strided view describes, copied out of its storage's bytes.
fn materialise(t: &TensorRef, bytes: &[u8]) -> std::result::Result<Tensor, String> {
    let (dtype, el) = match t.storage.dtype {
        PtDType::F32 => (DType::F32, 4),
        PtDType::BF16 => (DType::BF16, 2),
        PtDType::F16 => (DType::F16, 2),
    };
    let numel = t.storage.numel;
    if numel.checked_mul(el) != Some(bytes.len()) {
        return Err(format!(
            "storage `{}` of {numel} elements has {} bytes",
            t.storage.key,
            bytes.len()
        ));
    }
    let count = t
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("a shape whose size overflows")?;
    let mut out = Vec::with_capacity(count * el);
    if count > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&d, &s)| {
                a.checked_add((d - 1).checked_mul(s)?)
            })
            .filter(|&last| last < numel)
            .ok_or_else(|| {
                format!(
                    "offset {} with shape {:?} and strides {:?} reaches past the {numel} \
                     elements of its storage",
                    t.offset, t.size, t.stride
                )
            })?;
        let contiguous = {
            let mut want = 1;
            let mut ok = true;
            for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
                ok &= d == 1 || s == want;
                want *= d;
            }
            ok
        };
        if contiguous {
            out.extend_from_slice(&bytes[t.offset * el..(last + 1) * el]);
        } else {
            let mut index = vec![0usize; t.size.len()];
            for _ in 0..count {
                let at = t.offset
                    + index
                        .iter()
                        .zip(&t.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                out.extend_from_slice(&bytes[at * el..(at + 1) * el]);
                for dim in (0..index.len()).rev() {
                    index[dim] += 1;
                    if index[dim] < t.size[dim] {
                        break;
                    }
                    index[dim] = 0;
                }
            }
        }
    }
    Tensor::from_raw_buffer(&out, dtype, &t.size, &Device::Cpu).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::formats::pickle::StorageRef;

    fn view(offset: usize, size: &[usize], stride: &[usize]) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                dtype: PtDType::F32,
                key: "0".into(),
                numel: 6,
            },
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn bytes() -> Vec<u8> {
        (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn views_honour_offsets_and_strides() {
        let t = materialise(&view(0, &[2, 3], &[3, 1]), &bytes()).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[0., 1., 2.], [3., 4., 5.]]);
        let t = materialise(&view(0, &[3, 2], &[1, 3]), &bytes()).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[0., 3.], [1., 4.], [2., 5.]]);
        let t = materialise(&view(2, &[3], &[1]), &bytes()).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [2., 3., 4.]);
        let t = materialise(&view(1, &[2], &[2]), &bytes()).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [1., 3.]);
    }

    #[test]
    fn views_outside_their_storage_are_refused() {
        let err = materialise(&view(4, &[3], &[1]), &bytes()).unwrap_err();
        assert!(err.contains("reaches past"), "{err}");
        let err = materialise(&view(0, &[2, 3], &[3, 1]), &bytes()[..20]).unwrap_err();
        assert!(err.contains("20 bytes"), "{err}");
    }
}
