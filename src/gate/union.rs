//! `UnionInputGate`: several gates read as one, sharing one notify set so the task parks
//! on a single wake-up.

use super::config::InputGateConfig;
use super::single::{GateItem, Ready, SingleInputGate};
use crate::error::{ConfigError, Error, Result};
use crate::memory::Arena;
use crate::partition::ResultPartitionManager;
use crate::ring::NotifySet;
use crate::sync::{now_nanos, Waiter};
use std::sync::Arc;
use std::time::Duration;

/// A union of gates (Flink's UnionInputGate). Items carry the index of the gate they came
/// from.
///
/// Dropping it drops every gate in it (see [`crate::gate::SingleInputGate`]: channels not
/// at their end are closed, their producers told the consumer is gone) and returns its
/// gate block to the arena.
pub struct UnionInputGate {
    arena: Arc<Arena>,
    manager: ResultPartitionManager,
    set_id: u32,
    gates: Vec<SingleInputGate>,
    bases: Vec<u32>,
    members: u32,
    next_gate: usize,
    waiter: Waiter,
}

impl std::fmt::Debug for UnionInputGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UnionInputGate({} gates)", self.gates.len())
    }
}

impl UnionInputGate {
    /// A union over one gate per config.
    ///
    /// # Errors
    /// As [`SingleInputGate::new`]; [`ConfigError::Conflict`] for no gates,
    /// [`ConfigError::OutOfRange`] when the channels of all gates do not fit one notify set.
    pub fn new(arena: Arc<Arena>, configs: &[InputGateConfig]) -> Result<Self> {
        if configs.is_empty() {
            return Err(ConfigError::Conflict { what: "union gate", detail: "no gates".into() }.into());
        }
        let members: u32 = configs.iter().map(|c| c.inputs.len() as u32).sum();
        let manager = ResultPartitionManager::new(arena.clone());
        let set_id = manager.claim_gate(members)?;
        let mut gates = Vec::new();
        let mut bases = Vec::new();
        let mut base = 0;
        for cfg in configs {
            match SingleInputGate::with_set(arena.clone(), cfg, set_id, base) {
                Ok(g) => gates.push(g),
                Err(e) => {
                    drop(gates);
                    manager.release_gate(set_id);
                    return Err(e);
                }
            }
            bases.push(base);
            base += cfg.inputs.len() as u32;
        }
        let waiter = Waiter::new(configs[0].wait_policy);
        Ok(Self { arena, manager, set_id, gates, bases, members, next_gate: 0, waiter })
    }

    /// The gates.
    pub fn gates(&self) -> &[SingleInputGate] {
        &self.gates
    }

    fn collect(&mut self) -> Result<()> {
        let set = NotifySet::new(&self.arena, self.set_id)?;
        let mut marked = Vec::new();
        set.drain(self.members, |i| marked.push(i));
        for i in marked {
            let g = self.bases.partition_point(|&b| b <= i) - 1;
            self.gates[g].enqueue(i - self.bases[g]);
        }
        for g in &mut self.gates {
            g.grant_floating()?;
        }
        Ok(())
    }

    fn advance(&mut self) -> Result<Option<(usize, Ready)>> {
        for pass in 0..2 {
            let n = self.gates.len();
            let mut all_ended = true;
            for k in 0..n {
                let g = (self.next_gate + k) % n;
                if self.gates[g].is_finished() {
                    continue;
                }
                all_ended = false;
                if let Some(r) = self.gates[g].advance_ready()? {
                    if !matches!(r, Ready::Record(_)) || k > 0 {
                        self.next_gate = (g + 1) % n;
                    }
                    if matches!(r, Ready::Item(GateItem::End)) {
                        // One gate ended; the union ends when all have.
                        continue;
                    }
                    return Ok(Some((g, r)));
                }
            }
            if all_ended {
                return Ok(Some((0, Ready::Item(GateItem::End))));
            }
            if pass == 0 {
                self.collect()?;
            }
        }
        Ok(None)
    }

    /// The next item and the index of its gate, waiting on the one shared wake-up.
    ///
    /// # Errors
    /// As [`SingleInputGate::next`].
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<(usize, GateItem<'_>)> {
        let deadline = timeout.map(|t| now_nanos() + t.as_nanos() as u64);
        loop {
            if let Some((g, r)) = self.advance()? {
                return Ok((g, self.gates[g].materialize(r)));
            }
            let now = now_nanos();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout(timeout.unwrap_or_default(), "input on the union gate"));
            }
            // A gate that still has channels queued (its service budget ran out) goes on
            // at once; an ended gate has nothing queued, so a union with one input ended
            // and another silent waits below instead of spinning here.
            if self.gates.iter().any(|g| g.has_pending()) {
                continue;
            }
            for g in &mut self.gates {
                if !g.is_finished() {
                    g.probe_liveness()?;
                }
            }
            let arena = self.arena.clone();
            let set = NotifySet::new(&arena, self.set_id)?;
            let members = self.members;
            // Wait at most a liveness-probe interval at a time, so a dead producer is
            // noticed even when nothing wakes us.
            let slice = self.gates.iter().map(|g| g.liveness_interval()).min().unwrap_or(Duration::from_millis(100));
            let remaining = deadline.map_or(slice, |d| Duration::from_nanos(d.saturating_sub(now)).min(slice));
            let _ = self.waiter.wait(set.wake(), Some(remaining), || set.any(members).then_some(()));
        }
    }
}

impl Drop for UnionInputGate {
    fn drop(&mut self) {
        self.gates.clear();
        self.manager.release_gate(self.set_id);
    }
}
