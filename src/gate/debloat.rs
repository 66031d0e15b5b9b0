//! Buffer debloating (Flink's FLIP-183): the gate measures how fast it reads and asks every
//! producer to fill its segments only so far that about `throughput x target` bytes are in
//! flight when every credit is used.
//!
//! ```text
//!  every period:  rate = bytes read since last / time since last
//!                 size = rate x target / credits     clamped to [min_bytes, segment size]
//!                 announce it (ChannelBlock::ask_segment_fill on every channel) only when it
//!                 differs from the last announced one by more than threshold_percent
//! ```
//!
//! State ([`Debloater`]): the configuration, when and at what byte count it last measured,
//! and the size it last announced (0: none yet). Time comes in as an argument, so the
//! decision is a pure function the unit tests drive.

use std::time::Duration;

/// Buffer debloating: keep about `throughput x target` bytes in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebloatConfig {
    /// In-flight data the gate aims at, in time (Flink: 1 s).
    pub target: Duration,
    /// Smallest segment fill asked for (Flink's min buffer size is 256 B; here 1 KiB).
    pub min_bytes: u32,
    /// How often the throughput is measured and the size recomputed (Flink: 200 ms).
    pub period: Duration,
    /// A new size is announced only when it differs from the last by more than this
    /// percentage (Flink's threshold: 50%), so the size does not flutter.
    pub threshold_percent: u32,
}

impl Default for DebloatConfig {
    fn default() -> Self {
        Self {
            target: Duration::from_secs(1),
            min_bytes: 1024,
            period: Duration::from_millis(200),
            threshold_percent: 50,
        }
    }
}

/// The debloater's state in a gate.
#[derive(Debug, Clone)]
pub(super) struct Debloater {
    cfg: DebloatConfig,
    /// When it last measured (`now_nanos` clock).
    last_ns: u64,
    /// Bytes read (over all channels) at that time.
    last_bytes: u64,
    /// The segment fill it announced last (0: none yet).
    announced: u32,
}

impl Debloater {
    /// A debloater that starts measuring at `now_ns`.
    pub(super) fn new(cfg: DebloatConfig, now_ns: u64) -> Self {
        Self { cfg, last_ns: now_ns, last_bytes: 0, announced: 0 }
    }

    /// The segment fill announced last (0: none yet).
    pub(super) fn announced(&self) -> u32 {
        self.announced
    }

    /// Whether a period passed since the last measurement (cheap; call before summing the
    /// bytes read).
    #[inline]
    pub(super) fn due(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_ns) >= self.cfg.period.as_nanos() as u64
    }

    /// Measures at `now_ns` with `bytes` read so far over `credits` credits of segments of
    /// `segment_size` bytes: the new fill to announce, or `None` (not due, or within the
    /// threshold of the last one).
    pub(super) fn tick(&mut self, now_ns: u64, bytes: u64, credits: u32, segment_size: u32) -> Option<u32> {
        if !self.due(now_ns) {
            return None;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns).max(1);
        let rate = bytes.saturating_sub(self.last_bytes) as f64 * 1e9 / elapsed as f64;
        self.last_ns = now_ns;
        self.last_bytes = bytes;
        let want_total = rate * self.cfg.target.as_secs_f64();
        let per = (want_total / f64::from(credits.max(1)))
            .clamp(f64::from(self.cfg.min_bytes.min(segment_size)), f64::from(segment_size)) as u32;
        let old = self.announced;
        if old != 0 && u64::from(per.abs_diff(old)) * 100 <= u64::from(old) * u64::from(self.cfg.threshold_percent) {
            return None;
        }
        self.announced = per;
        Some(per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn it_announces_throughput_times_target_over_credits_once_a_period_passed() {
        let mut d = Debloater::new(DebloatConfig::default(), 0);
        assert_eq!(d.tick(100 * MS, 1 << 20, 10, 32 << 10), None, "not a period yet");
        // 200 KB in 200 ms = 1 MB/s; x 1 s / 100 credits = 10,000 bytes per segment.
        assert_eq!(d.tick(200 * MS, 200_000, 100, 32 << 10), Some(10_000));
        assert_eq!(d.announced(), 10_000);
    }

    #[test]
    fn the_size_is_clamped_to_the_minimum_and_to_the_segment() {
        let mut d = Debloater::new(DebloatConfig::default(), 0);
        assert_eq!(d.tick(200 * MS, 0, 10, 32 << 10), Some(1024), "idle: the minimum");
        let mut d = Debloater::new(DebloatConfig::default(), 0);
        assert_eq!(d.tick(200 * MS, 1 << 40, 1, 32 << 10), Some(32 << 10), "flooded: a whole segment");
    }

    #[test]
    fn a_change_within_the_threshold_is_not_announced_and_a_larger_one_is() {
        let mut d = Debloater::new(DebloatConfig::default(), 0);
        assert_eq!(d.tick(200 * MS, 200_000, 100, 1 << 20), Some(10_000));
        // +40%: within 50%.
        assert_eq!(d.tick(400 * MS, 200_000 + 280_000, 100, 1 << 20), None);
        assert_eq!(d.announced(), 10_000);
        // x3: announced.
        assert_eq!(d.tick(600 * MS, 480_000 + 600_000, 100, 1 << 20), Some(30_000));
    }
}
