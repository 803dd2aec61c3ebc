//! A quantised weight matrix in whichever format has a kernel here, chosen by the tensor's ggml
//! type, so model code holds one kind of matrix and never names a format.

use candle_core::quantized::QTensor;

use super::k_min::{Q4K, Q5K};
use super::q4_1::Q4_1;
use super::q5_0::Q5_0;
use super::q6_k::Q6K;
use super::q8_0::Q8_0;
use super::{BlockFormat, QuantMatrix};
use crate::Result;

/// Defines [`AnyQuantMatrix`] over the listed formats: one variant each, and every method a match
/// that hands the call to that format's [`QuantMatrix`].
macro_rules! any_quant_matrix {
    ($($variant:ident => $format:ty),* $(,)?) => {
        /// A [`QuantMatrix`] of one of the formats with a kernel here.
        pub(crate) enum AnyQuantMatrix {
            $(
                #[doc = concat!("Blocks of ", stringify!($format), ".")]
                $variant(QuantMatrix<$format>),
            )*
        }

        impl AnyQuantMatrix {
            /// The blocks of a 2-D `QTensor` of a type with a kernel here whose rows are whole
            /// blocks, or `None` for other types and shapes.
            pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
                $(
                    if q.dtype() == <$format as BlockFormat>::DTYPE {
                        return Ok(QuantMatrix::<$format>::from_qtensor(q)?.map(Self::$variant));
                    }
                )*
                Ok(None)
            }

            /// Number of output rows.
            pub fn rows(&self) -> usize {
                match self {
                    $(Self::$variant(w) => w.rows(),)*
                }
            }

            /// `x · Wᵀ` for `m` input rows (see [`QuantMatrix::matmul`]).
            pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
                match self {
                    $(Self::$variant(w) => w.matmul(x, m),)*
                }
            }

            /// Stacks matrices along the output rows, keeping their blocks: `None` unless all
            /// have the first one's format and `k`.
            pub fn concat(parts: &[&Self]) -> Option<Self> {
                match parts.first()? {
                    $(Self::$variant(_) => {
                        let same = parts.iter().map(|p| match p {
                            Self::$variant(w) => Some(w),
                            _ => None,
                        });
                        QuantMatrix::concat(&same.collect::<Option<Vec<_>>>()?).map(Self::$variant)
                    })*
                }
            }
        }
    };
}

any_quant_matrix! {
    Q4_1 => Q4_1,
    Q8_0 => Q8_0,
    Q5_0 => Q5_0,
    Q4K => Q4K,
    Q5K => Q5K,
    Q6K => Q6K,
}
