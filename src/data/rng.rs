//! The seeded generator behind every sample and shuffle of data (documents, rows, prompts).
//!
//! SplitMix64 with a partial Fisher–Yates draw: deterministic for a seed on every platform, but
//! *not* bit-compatible with Python's `random.sample` or `torch.randperm`; the reference's exact
//! rows cannot be reproduced anyway without its gated forget corpus.

/// A small seeded generator (SplitMix64, Steele et al. 2014): deterministic and portable.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (> 0), by rejection.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Moves a uniform sample of `k` elements (in draw order) to the front of `items` and drops
    /// the rest: a partial Fisher–Yates shuffle. `k ≥ len` shuffles everything.
    pub fn sample<T>(&mut self, items: &mut Vec<T>, k: usize) {
        let k = k.min(items.len());
        for i in 0..k {
            let j = i + self.below(items.len() - i);
            items.swap(i, j);
        }
        items.truncate(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_a_seeded_subset() {
        let mut v: Vec<u32> = (0..100).collect();
        SplitMix64::new(0).sample(&mut v, 10);
        assert_eq!(v.len(), 10);
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
    }

    #[test]
    fn first_outputs_match_the_published_splitmix64() {
        // Seed 0: the reference sequence of Vigna's splitmix64.c.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
