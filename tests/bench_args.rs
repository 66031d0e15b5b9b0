//! The benches' shared command line (benches/common/args.rs): it accepts what cargo passes a
//! harness-less bench and rejects every flag it does not know.

#[path = "../benches/common/args.rs"]
mod args;

use args::{list, BenchArgs};
use clap::Parser;

/// A bench's flags as the benches declare them: the shared ones plus its own.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    #[arg(long)]
    rounds: Option<u32>,
    #[arg(long = "no-pin", action = clap::ArgAction::SetFalse)]
    pin: bool,
}

fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
}

#[test]
fn what_cargo_bench_and_cargo_test_pass_is_accepted() {
    // `cargo bench --bench X -- --json out.json --rounds 2` runs `X --json out.json --rounds 2 --bench`.
    let c = parse(&["--json", "out.json", "--rounds", "2", "--bench"]).unwrap();
    assert!(c.bench.full);
    assert_eq!(c.bench.json.as_deref(), Some(std::path::Path::new("out.json")));
    assert_eq!(c.rounds, Some(2));
    assert!(c.pin, "pinned unless --no-pin");
    // `cargo test --benches` runs it without arguments: the quick run.
    let c = parse(&[]).unwrap();
    assert!(!c.bench.full && c.bench.json.is_none() && c.rounds.is_none());
    // libtest's arguments a user gives `cargo test -- ...` reach every target.
    let c = parse(&["--nocapture", "--test-threads", "1", "some_test_name", "--no-pin"]).unwrap();
    assert!(!c.bench.full && !c.pin);
}

#[test]
fn unknown_or_incomplete_flags_are_errors_not_ignored() {
    for argv in [&["--bogus"][..], &["--jsn", "x"], &["--bench", "--rounds"], &["--rounds", "many"], &["--json"]] {
        let e = parse(argv).expect_err(&format!("{argv:?} was accepted"));
        assert_ne!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{argv:?}: {e}");
    }
    let e = parse(&["--bogus", "--bench"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{e}");
}

#[test]
fn lists_parse_every_item_or_say_which_is_wrong() {
    assert_eq!(list::<u32>("1, 2,4").unwrap(), [1, 2, 4]);
    let e = list::<u32>("1,x,4").unwrap_err();
    assert!(e.contains("\"x\""), "{e}");
}
