//! A user's own job on the shmflow runtime: sensor readings keyed by sensor, averaged over
//! count windows, across worker processes.
//!
//! ```sh
//! cargo run --release --example sensor_windows -- --readings 2000000 --parallelism 2 --workers 2
//! ```
//!
//! The same binary is the coordinator and (re-executed with the same arguments) every
//! worker, so the operators below are plain closures: nothing is serialized but records.

use shmflow::runtime::{run, Collector, JobBuilder, RuntimeConfig, TaskInfo};
use std::sync::{Arc, Mutex};

/// A reading: (sensor id, value in milli-degrees).
type Reading = (u64, i64);

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Prints one line per sink subtask when its input ends.
struct Report {
    subtask: u32,
    windows: u64,
    hottest: Option<Reading>,
    seen: Arc<Mutex<()>>,
}

impl Collector<Reading> for Report {
    fn collect(&mut self, r: Reading) -> shmflow::Result<()> {
        self.windows += 1;
        if self.hottest.is_none_or(|h| r.1 > h.1) {
            self.hottest = Some(r);
        }
        Ok(())
    }
    fn finish(&mut self) -> shmflow::Result<()> {
        let _guard = self.seen.lock();
        if let Some((sensor, avg)) = self.hottest {
            eprintln!(
                "sink {}: {} windows; hottest window average {:.3} degrees on sensor {sensor}",
                self.subtask,
                self.windows,
                avg as f64 / 1000.0
            );
        }
        Ok(())
    }
}

fn main() -> shmflow::Result<()> {
    let readings = arg("--readings", 1_000_000);
    let parallelism = arg("--parallelism", 2) as u32;
    let sensors = 1000u64;
    let job = JobBuilder::new("sensor-windows", parallelism)
        .source("sensors", move |info: &TaskInfo, out: &mut dyn Collector<Reading>| {
            let p = u64::from(info.parallelism);
            let i = u64::from(info.subtask);
            for n in (readings * i / p)..(readings * (i + 1) / p) {
                let sensor = n % sensors;
                // A deterministic wobble around 20 degrees, hotter for higher sensor ids.
                let value = 20_000 + (sensor as i64) * 3 + ((n.wrapping_mul(2_654_435_761) >> 7) % 2000) as i64 - 1000;
                out.collect((sensor, value))?;
            }
            Ok(())
        })
        .filter("drop implausible", |r: &Reading| (-50_000..150_000).contains(&r.1))
        .key_by(|r: &Reading| &r.0)
        .count_window("average of 100, every 50", 100, 50, |w: &[Reading]| {
            (w[0].0, w.iter().map(|r| r.1).sum::<i64>() / w.len() as i64)
        })
        .sink("report", {
            let seen = Arc::new(Mutex::new(()));
            move |info: &TaskInfo| {
                Ok(Box::new(Report { subtask: info.subtask, windows: 0, hottest: None, seen: seen.clone() })
                    as Box<dyn Collector<Reading>>)
            }
        });
    let config = RuntimeConfig { workers: arg("--workers", 2) as u32, ..RuntimeConfig::default() };
    if let Some(summary) = run(job, &config)? {
        println!(
            "{} readings through the keyed exchange in {:.3} s ({:.2} M/s)",
            summary.records,
            summary.elapsed_s,
            summary.records_per_s / 1e6
        );
    }
    Ok(())
}
