//! What the CPU can run: the one check that every hand-written kernel (products, attention,
//! softmax, `exp`, the quantised formats) branches on.

/// Whether the AVX2 kernels can run (AVX2, FMA and F16C), detected at run time.
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
