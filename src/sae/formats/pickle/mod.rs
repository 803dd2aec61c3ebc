//! A pickle reader that executes nothing, for the `data.pkl` of a PyTorch checkpoint.
//!
//! Python's unpickler imports and calls whatever a file names, so loading an untrusted `.pt` with
//! it runs arbitrary code. This reader instead interprets only the opcodes that `torch.save`
//! emits for tensors and plain containers (dict, `OrderedDict`, list, tuple, str, bytes, int,
//! float, bool, None) and resolves a global only when it is on a short allow-list of names it
//! understands itself (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter`, the float storage types and dtypes). Any other global (e.g.
//! `os.system`, `builtins.eval`), any call (`REDUCE`) of something not on the list, and the
//! object-building opcodes (`INST`, `OBJ`, `NEWOBJ`, extension codes) are refused with a message
//! that names them; nothing named by the file is ever looked up in a real namespace.

mod objects;

use std::collections::HashMap;

#[cfg(test)]
pub(crate) use objects::StorageRef;
use objects::{global, long, persistent, reduce, size_within};
pub(crate) use objects::{PtDType, TensorRef, Value};

/// How deeply containers may nest (torch checkpoints nest a few levels).
const MAX_DEPTH: usize = 32;

/// How many values the memo and `DUP` may copy in all, since a copy here is deep where Python
/// shares the object (without a cap, a few hundred bytes could ask for exponential memory).
const COPY_BUDGET: usize = 1 << 20;

/// Parses a pickle into the value it describes; errors say what was refused and at which byte.
pub(crate) fn parse(data: &[u8]) -> Result<Value, String> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copies_left: COPY_BUDGET,
    };
    loop {
        let at = m.pos;
        let op = m.byte()?;
        match m.step(op) {
            Ok(true) => continue,
            Ok(false) => return m.pop(),
            Err(e) => return Err(format!("byte {at} (opcode {}): {e}", op_name(op))),
        }
    }
}

/// The printable name of an opcode.
fn op_name(op: u8) -> String {
    if op.is_ascii_graphic() {
        format!("{:?}", op as char)
    } else {
        format!("0x{op:02x}")
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    copies_left: usize,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("truncated: {n} more bytes needed at byte {}", self.pos))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    fn len(&mut self, n: usize) -> Result<usize, String> {
        let v = self.uint(n)?;
        usize::try_from(v).map_err(|_| format!("length {v} too large"))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated: unterminated line")?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| "a line that is not UTF-8")?;
        self.pos += end + 1;
        Ok(s.to_string())
    }

    fn string(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| "a str that is not UTF-8".to_string())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "stack underflow".to_string())
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK on the stack")?;
        if mark > self.stack.len() {
            return Err("MARK above the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn push(&mut self, v: Value) -> Result<bool, String> {
        size_within(&v, MAX_DEPTH).ok_or(format!("containers nested deeper than {MAX_DEPTH}"))?;
        self.stack.push(v);
        Ok(true)
    }

    /// A deep copy of `v`, charged to the copy budget.
    fn copy(&mut self, v: &Value) -> Result<Value, String> {
        let n = size_within(v, MAX_DEPTH).unwrap_or(usize::MAX);
        self.copies_left = self.copies_left.checked_sub(n).ok_or(format!(
            "more than {COPY_BUDGET} values copied by the memo or DUP"
        ))?;
        Ok(v.clone())
    }

    fn put(&mut self, key: u64) -> Result<bool, String> {
        let top = self.top()?.clone();
        let v = self.copy(&top)?;
        self.memo.insert(key, v);
        Ok(true)
    }

    fn get(&mut self, key: u64) -> Result<bool, String> {
        let stored = self
            .memo
            .get(&key)
            .ok_or_else(|| format!("memo key {key} was never stored"))?
            .clone();
        let v = self.copy(&stored)?;
        self.push(v)
    }

    /// Refuses `items` that would nest a container on the stack too deeply.
    fn check_items(items: &[Value]) -> Result<(), String> {
        match items
            .iter()
            .all(|v| size_within(v, MAX_DEPTH - 1).is_some())
        {
            true => Ok(()),
            false => Err(format!("containers nested deeper than {MAX_DEPTH}")),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<bool, String> {
        if !items.len().is_multiple_of(2) {
            return Err("an odd number of items for a dict".into());
        }
        Self::check_items(&items)?;
        let Value::Dict(entries) = self.top()? else {
            return Err("SETITEM(S) on something that is not a dict".into());
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            entries.push((k, v));
        }
        Ok(true)
    }

    fn append(&mut self, items: Vec<Value>) -> Result<bool, String> {
        Self::check_items(&items)?;
        let Value::List(list) = self.top()? else {
            return Err("APPEND(S) on something that is not a list".into());
        };
        list.extend(items);
        Ok(true)
    }

    fn tuple(&mut self, n: usize) -> Result<bool, String> {
        if n > self.stack.len() {
            return Err("stack underflow".into());
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.push(Value::Tuple(items))
    }

    /// Runs one opcode; `Ok(false)` at STOP.
    fn step(&mut self, op: u8) -> Result<bool, String> {
        match op {
            0x80 => self.take(1).map(|_| true), // PROTO
            0x95 => self.take(8).map(|_| true), // FRAME
            b'.' => Ok(false),                  // STOP
            b'(' => {
                self.marks.push(self.stack.len());
                Ok(true)
            }
            b'0' => self.pop().map(|_| true),
            b'1' => self.pop_mark().map(|_| true),
            b'2' => {
                let top = self.top()?.clone();
                let v = self.copy(&top)?;
                self.push(v)
            }
            b'}' => self.push(Value::Dict(Vec::new())),
            b']' => self.push(Value::List(Vec::new())),
            b')' => self.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items))
            }
            0x85 => self.tuple(1),
            0x86 => self.tuple(2),
            0x87 => self.tuple(3),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(items))
            }
            b'd' => {
                let items = self.pop_mark()?;
                self.push(Value::Dict(Vec::new()))?;
                self.set_items(items)
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(items)
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)
            }
            b'J' => {
                let v = self.uint(4)? as u32 as i32;
                self.push(Value::Int(v as i64))
            }
            b'K' => {
                let v = self.uint(1)?;
                self.push(Value::Int(v as i64))
            }
            b'M' => {
                let v = self.uint(2)?;
                self.push(Value::Int(v as i64))
            }
            0x8a => {
                let n = self.len(1)?;
                let v = long(self.take(n)?)?;
                self.push(Value::Int(v))
            }
            b'G' => {
                let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
                self.push(Value::Float(f64::from_be_bytes(b)))
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'X' => {
                let n = self.len(4)?;
                let v = self.string(n)?;
                self.push(v)
            }
            0x8c => {
                let n = self.len(1)?;
                let v = self.string(n)?;
                self.push(v)
            }
            0x8d => {
                let n = self.len(8)?;
                let v = self.string(n)?;
                self.push(v)
            }
            b'C' | b'U' => {
                let n = self.len(1)?;
                let v = self.take(n)?.to_vec();
                self.push(Value::Bytes(v))
            }
            b'B' | b'T' => {
                let n = self.len(4)?;
                let v = self.take(n)?.to_vec();
                self.push(Value::Bytes(v))
            }
            b'q' => {
                let k = self.uint(1)?;
                self.put(k)
            }
            b'r' => {
                let k = self.uint(4)?;
                self.put(k)
            }
            0x94 => {
                let k = self.memo.len() as u64;
                self.put(k)
            }
            b'h' => {
                let k = self.uint(1)?;
                self.get(k)
            }
            b'j' => {
                let k = self.uint(4)?;
                self.get(k)
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = global(&module, &name)?;
                self.push(Value::Global(g))
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL with names that are not strings".into());
                };
                let g = global(&module, &name)?;
                self.push(Value::Global(g))
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = reduce(callable, args)?;
                self.push(v)
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = persistent(pid)?;
                self.push(v)
            }
            b'b' => {
                // BUILD: only the attribute state of a (Ordered)dict, e.g. a state dict's
                // `_metadata`, which says nothing about the tensors and is dropped.
                let _state = self.pop()?;
                match self.top()? {
                    Value::Dict(_) => Ok(true),
                    other => Err(format!("BUILD (setting state) on a {}", other.kind())),
                }
            }
            b'i' | b'o' | 0x81 | 0x92 => Err("building an arbitrary object is refused".into()),
            0x82..=0x84 => Err("extension-registry objects are refused".into()),
            _ => Err("an opcode this reader does not support".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_containers() {
        // {'a': [1, -2, 300], 'b': (True, None, 1.5), 'c': 'x'} at protocol 2, hand-assembled.
        let mut p = vec![0x80, 2, b'}', b'('];
        p.extend(b"X\x01\x00\x00\x00a]");
        p.extend(b"(K\x01J\xfe\xff\xff\xffM\x2c\x01e");
        p.extend(b"X\x01\x00\x00\x00b\x88N");
        p.push(b'G');
        p.extend(1.5f64.to_be_bytes());
        p.push(0x87);
        p.extend(b"X\x01\x00\x00\x00c\x8c\x01xu.");
        let v = parse(&p).unwrap();
        let want = Value::Dict(vec![
            (
                Value::Str("a".into()),
                Value::List(vec![Value::Int(1), Value::Int(-2), Value::Int(300)]),
            ),
            (
                Value::Str("b".into()),
                Value::Tuple(vec![Value::Bool(true), Value::None, Value::Float(1.5)]),
            ),
            (Value::Str("c".into()), Value::Str("x".into())),
        ]);
        assert_eq!(v, want);
    }

    #[test]
    fn refuses_unlisted_globals_and_calls() {
        let err = parse(b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap_err();
        assert!(err.contains("`posix.system`"), "{err}");
        let err = parse(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err();
        assert!(err.contains("`builtins.eval`"), "{err}");
        let err = parse(b"(ios\nsystem\n.").unwrap_err();
        assert!(err.contains("arbitrary object"), "{err}");
        let err = parse(b"ctorch\nFloatStorage\n)R.").unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }

    #[test]
    fn deep_nesting_and_copy_bombs_are_refused() {
        // ((((None,),),)…) a million levels deep, from two bytes per level.
        let mut p = vec![0x80, 2, b'N'];
        p.extend(std::iter::repeat_n(0x85, 1_000_000));
        p.push(b'.');
        assert!(parse(&p).unwrap_err().contains("nested deeper"));
        // A list that doubles on every step: [L, L] memoised, 40 times.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..40 {
            p.extend([b'(', b'h', 0, b'h', 0, b'l', b'q', 0]);
        }
        p.push(b'.');
        let err = parse(&p).unwrap_err();
        assert!(err.contains("copied") || err.contains("nested"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\x80",
            b"X\xff\xff\xff\xff",
            b"h\x05.",
            b"u.",
            b"t.",
            b"\x8a\x09\x00",
            b"s.",
            b"\xfe",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
