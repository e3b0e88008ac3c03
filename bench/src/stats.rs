//! Medians and spreads of repeated measurements.

use std::time::Duration;

/// Median, minimum and maximum.
#[derive(Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Summary {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// Nanoseconds per item.
pub fn per_item(d: Duration, items: usize) -> f64 {
    d.as_nanos() as f64 / items as f64
}
