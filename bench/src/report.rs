//! Formatting and summarising figures for the printed tables.

use std::time::Duration;

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

pub fn ratio(ours: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}x", ours / base)
    } else {
        "n/a".into()
    }
}

/// The median of a set of figures; of an even number, the mean of the middle two (of two rounds,
/// the upper one alone would be the worse round, not a middle).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_even_count_is_the_middle_pairs_mean() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[11.5, 2.5]), Some(7.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
