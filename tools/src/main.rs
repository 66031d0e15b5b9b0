//! `shmflow-tools`: the benchmark report of shmflow. `tools/bench-report` runs the
//! benchmarks, each writing `DIR/<bench>.json` (an array of flat records, one per figure),
//! and then these commands:
//!
//! - `shmflow-tools machine DIR start [--quick]` records the machine, the load, the date and
//!   the git commit in `DIR/machine.json` before the benchmarks run; `shmflow-tools machine
//!   DIR end [--failed "NAMES"]` adds the load and date at the end and what failed.
//! - `shmflow-tools report DIR` merges the records into `DIR/results.json`, draws
//!   `DIR/plots/*.svg` and writes `DIR/report.md`: the machine, the goals of the suite
//!   checked against the figures, and per benchmark its systems side by side.
//! - `shmflow-tools readme DIR README.md` regenerates the README's performance section
//!   (between `<!-- bench-report:begin -->` and `<!-- bench-report:end -->`) from `DIR`.

mod goals;
mod machine;
mod pivot;
mod plots;
mod readme;
mod records;
mod report;
mod units;

use std::path::Path;

const USAGE: &str = "usage:
  shmflow-tools report DIR                    merge DIR/*.json into DIR/results.json, write DIR/report.md and DIR/plots/
  shmflow-tools readme DIR README.md          regenerate README.md's section between the bench-report markers
  shmflow-tools machine DIR start [--quick]   record the machine in DIR/machine.json before a run
  shmflow-tools machine DIR end [--failed \"NAMES\"]   add the end of the run (load, date, failed benchmarks)";

fn machine_cmd(dir: &Path, rest: &[String]) -> Result<(), String> {
    match rest.first().map(String::as_str) {
        Some("start") => {
            let quick = match rest.get(1).map(String::as_str) {
                None => false,
                Some("--quick") => true,
                Some(x) => return Err(format!("unknown argument {x}\n{USAGE}")),
            };
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            machine::save(dir, &machine::probe(if quick { "quick" } else { "full" }))
        }
        Some("end") => {
            let failed: Vec<String> = match (rest.get(1).map(String::as_str), rest.get(2)) {
                (None, _) => Vec::new(),
                (Some("--failed"), Some(names)) => names.split_whitespace().map(str::to_string).collect(),
                _ => return Err(USAGE.into()),
            };
            let mut m = machine::load(dir)?.unwrap_or_else(|| machine::probe("unknown"));
            machine::finish(&mut m, &failed);
            machine::save(dir, &m)
        }
        _ => Err(USAGE.into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["report", dir] => report::run(Path::new(dir)),
        ["readme", dir, readme] => readme::run(Path::new(dir), Path::new(readme)),
        ["machine", dir, ..] => machine_cmd(Path::new(dir), &args[2..]),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("shmflow-tools: error: {e}");
        std::process::exit(1);
    }
}
