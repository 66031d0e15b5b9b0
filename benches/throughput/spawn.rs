//! Producer processes, seen from the consumer (a module of the throughput bench).

use super::*;

/// The producer command for `case`; it dies with this process (PR_SET_PDEATHSIG).
pub(crate) fn producer_command(system: System, case: Case, cpu: Option<usize>) -> Res<Command> {
    // If a concurrent build replaced our file, /proc/self/exe still execs this very binary
    // (the path is preferred otherwise: under valgrind /proc/self/exe is valgrind itself).
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(if exe.exists() { exe } else { "/proc/self/exe".into() });
    cmd.env(ENV_SPEC, encode_spec(system, case)).stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(cpu) = cpu {
        cmd.env(ENV_CPU, cpu.to_string());
    }
    die_with_parent(&mut cmd);
    Ok(cmd)
}

impl Producer {
    /// Reads the per-writer counts, then waits (bounded) for a clean exit.
    pub(crate) fn finish(mut self, writers: u32) -> Res<Vec<u64>> {
        let rest = self.expect_line("sent")?;
        let counts = rest.split_whitespace().map(str::parse).collect::<Result<Vec<u64>, _>>()?;
        if counts.len() != writers as usize {
            return Err(format!("{} counts for {writers} writers", counts.len()).into());
        }
        self.close_and_wait()?;
        Ok(counts)
    }
}
