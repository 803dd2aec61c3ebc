//! dsg's own CPU kernels, apart from the model code that calls them (never the other way round):
//! the f32 tile product ([`gemm`]) and the few-row products ([`matvec`]), attention of many queries
//! ([`attend`]) and of one query per row straight from a layer's key/value buffer ([`kv`]), the
//! fused masked softmax ([`softmax`]) and vectorised `exp` ([`vexp`]), the quantised weight formats
//! ([`quant`]), the thread team they share ([`team`]) and the one check of what the CPU can run
//! ([`cpu`]). Each hand-written AVX2 kernel has a portable fallback and a unit test against it.

pub(crate) mod attend;
pub(crate) mod cpu;
pub(crate) mod gemm;
pub(crate) mod kv;
pub(crate) mod matvec;
pub(crate) mod quant;
pub(crate) mod softmax;
pub(crate) mod team;
pub(crate) mod vexp;
