//! Quantiles of measured durations, shared by the bench binaries (`mesoblk-master-sim` and
//! `mesoblk-agent-bench`).

use std::time::Duration;

/// The `fraction` quantile of some durations (nearest rank), in ms; 0 when there are none.
pub(crate) fn quantile_ms(samples: &mut [Duration], fraction: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )] // a rank within the slice.
    let rank = ((fraction * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1000.0
}
