//! The values the pickle reader builds, the allow-list of globals, and the few calls it
//! evaluates itself (`OrderedDict`, `_rebuild_tensor_v2`, `_rebuild_parameter`, storage ids).

/// The storage element types dsg reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PtDType {
    /// `torch.float32` / `FloatStorage`.
    F32,
    /// `torch.bfloat16` / `BFloat16Storage`.
    BF16,
    /// `torch.float16` / `HalfStorage`.
    F16,
}

/// A global on the allow-list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch.FloatStorage`, `torch.BFloat16Storage`, `torch.HalfStorage`.
    Storage(PtDType),
    /// `torch.float32`, `torch.bfloat16`, `torch.float16`.
    DType(PtDType),
}

/// A storage named by a persistent id: the zip member `data/{key}` holding `numel` elements.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// Element type.
    pub dtype: PtDType,
    /// The member name under `data/`.
    pub key: String,
    /// Number of elements in the storage.
    pub numel: usize,
}

/// A tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    /// The storage viewed.
    pub storage: StorageRef,
    /// Offset of the first element, in elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Stride of each dimension, in elements.
    pub stride: Vec<usize>,
}

/// A value the reader can build.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes (or a Python 2 str).
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// An allowed global (a callable or a dtype).
    Global(Global),
    /// A storage (persistent id).
    Storage(StorageRef),
    /// A tensor.
    Tensor(TensorRef),
}

impl Value {
    /// A short description for error messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// The number of values in `v` (itself included), or `None` when it nests deeper than
/// `max_depth`; iterative, so a hostile nesting cannot exhaust the call stack.
pub(super) fn size_within(v: &Value, max_depth: usize) -> Option<usize> {
    let mut todo = vec![(v, 0usize)];
    let mut n = 0;
    while let Some((v, depth)) = todo.pop() {
        if depth > max_depth {
            return None;
        }
        n += 1;
        match v {
            Value::List(xs) | Value::Tuple(xs) => todo.extend(xs.iter().map(|x| (x, depth + 1))),
            Value::Dict(kv) => {
                for (k, x) in kv {
                    todo.push((k, depth + 1));
                    todo.push((x, depth + 1));
                }
            }
            _ => {}
        }
    }
    Some(n)
}

/// The allow-list, as written in error messages.
const ALLOWED: &str = "collections.OrderedDict, torch._utils._rebuild_tensor_v2, \
                       torch._utils._rebuild_parameter, torch.{Float,BFloat16,Half}Storage, \
                       torch.{float32,bfloat16,float16}";

/// Resolves `module.name` against the allow-list.
pub(super) fn global(module: &str, name: &str) -> Result<Global, String> {
    let dtype = |s: &str| match s {
        "FloatStorage" | "float32" => Some(PtDType::F32),
        "BFloat16Storage" | "bfloat16" => Some(PtDType::BF16),
        "HalfStorage" | "float16" => Some(PtDType::F16),
        _ => None,
    };
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", n) if n.ends_with("Storage") && dtype(n).is_some() => {
            Ok(Global::Storage(dtype(n).expect("checked")))
        }
        ("torch", n) if dtype(n).is_some() => Ok(Global::DType(dtype(n).expect("checked"))),
        _ => Err(format!(
            "global `{module}.{name}`, which is not on the allow-list and is never imported or \
             run (allowed: {ALLOWED})"
        )),
    }
}

/// A two's-complement little-endian integer of at most 8 bytes (LONG1).
pub(super) fn long(b: &[u8]) -> Result<i64, String> {
    if b.is_empty() {
        return Ok(0);
    }
    if b.len() > 8 {
        return Err(format!(
            "an integer of {} bytes (more than 64 bits)",
            b.len()
        ));
    }
    let mut v = 0i64;
    for (i, &x) in b.iter().enumerate() {
        v |= (x as i64) << (8 * i);
    }
    let bits = 8 * b.len();
    if bits < 64 && b[b.len() - 1] & 0x80 != 0 {
        v -= 1i64 << bits;
    }
    Ok(v)
}

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} {i} is negative")),
        other => Err(format!("{what} is a {}, not an int", other.kind())),
    }
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|x| as_usize(x, what)).collect()
        }
        other => Err(format!("{what} is a {}, not a tuple", other.kind())),
    }
}

/// `callable(*args)` for the allowed callables.
pub(super) fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Tuple(args) = args else {
        return Err(format!("call arguments are a {}, not a tuple", args.kind()));
    };
    let g = match callable {
        Value::Global(g) => g,
        other => return Err(format!("calling a {} is refused", other.kind())),
    };
    match (g, args.as_slice()) {
        (Global::OrderedDict, []) => Ok(Value::Dict(Vec::new())),
        (Global::OrderedDict, [Value::List(pairs)]) => pairs
            .iter()
            .map(|p| match p {
                Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                    Ok((kv[0].clone(), kv[1].clone()))
                }
                _ => Err("OrderedDict items that are not pairs".to_string()),
            })
            .collect::<Result<_, _>>()
            .map(Value::Dict),
        (Global::RebuildTensorV2, [storage, offset, size, stride, _grad, hooks, ..])
            if args.len() <= 7 =>
        {
            let Value::Storage(storage) = storage else {
                return Err(format!("a tensor over a {}, not a storage", storage.kind()));
            };
            if !matches!(hooks, Value::Dict(h) if h.is_empty()) {
                return Err("a tensor with backward hooks".into());
            }
            let size = usizes(size, "tensor size")?;
            let stride = usizes(stride, "tensor stride")?;
            if size.len() != stride.len() {
                return Err(format!(
                    "tensor size {size:?} and stride {stride:?} differ in rank"
                ));
            }
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: as_usize(offset, "storage offset")?,
                size,
                stride,
            }))
        }
        (Global::RebuildParameter, [t @ Value::Tensor(_), _grad, _hooks]) => Ok(t.clone()),
        (g, _) => Err(format!(
            "calling {g:?} with {} argument(s) of this kind is refused",
            args.len()
        )),
    }
}

/// A persistent id `('storage', StorageType, key, location, numel)`.
pub(super) fn persistent(pid: Value) -> Result<Value, String> {
    let bad = || "a persistent id that is not ('storage', type, key, location, numel)".to_string();
    let Value::Tuple(items) = pid else {
        return Err(bad());
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(dtype)), key, _location, numel]
            if tag == "storage" =>
        {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err(bad()),
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("storage key {key:?} is not a plain name"));
            }
            Ok(Value::Storage(StorageRef {
                dtype: *dtype,
                key,
                numel: as_usize(numel, "storage size")?,
            }))
        }
        [Value::Str(tag), Value::Global(g), ..] if tag == "storage" => Err(format!(
            "storage of type {g:?} (only float storages are read)"
        )),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long1_is_twos_complement() {
        assert_eq!(long(&[0xff]).unwrap(), -1);
        assert_eq!(long(&[0x00, 0x01]).unwrap(), 256);
        assert_eq!(long(&[0xff, 0x7f]).unwrap(), 32767);
        assert!(long(&[0; 9]).is_err());
    }
}
