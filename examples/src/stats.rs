//! Latency statistics of the `bench` and `scale` reports.

/// The nearest-rank `q` quantile (0 < `q` ≤ 1) of `sorted` (ascending), or
/// `None` when it is empty.
pub fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_picks_the_sample_at_the_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&s, 0.5), Some(50.0));
        assert_eq!(nearest_rank(&s, 0.99), Some(99.0));
        assert_eq!(nearest_rank(&s[..1], 0.9), Some(1.0));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
