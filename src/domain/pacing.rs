//! What a rate means, measured: Meta counts throughput (and its pair limit) over any
//! interval, not over aligned windows, so a pace is judged by its busiest interval of
//! the given width wherever it starts.

/// The most events (times, sorted ascending) that fall in any half-open interval
/// `[t, t + width)`.
pub fn busiest_interval(sorted_times: &[i64], width: i64) -> usize {
    let mut busiest = 0;
    let mut start = 0;
    for (end, &at) in sorted_times.iter().enumerate() {
        while sorted_times[start] + width <= at {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    busiest
}

#[cfg(test)]
mod tests {
    use super::busiest_interval;

    #[test]
    fn counts_across_aligned_boundaries() {
        // 3 at the end of one second and 3 at the start of the next: aligned windows see
        // 3 each, the sliding interval sees all 6.
        let times = [900, 950, 990, 1_010, 1_050, 1_100, 2_500];
        assert_eq!(busiest_interval(&times, 1_000), 6);
    }

    #[test]
    fn an_interval_excludes_its_end() {
        assert_eq!(busiest_interval(&[0, 1_000, 2_000], 1_000), 1);
        assert_eq!(busiest_interval(&[0, 999, 1_998], 1_000), 2);
        assert_eq!(busiest_interval(&[], 1_000), 0);
    }
}
