//! Flink's accumulators: results a job's tasks hand back to the coordinator, merged into
//! [`super::JobSummary::accumulators`] (and the `--json` summary of the built-in jobs).
//!
//! ```text
//!  task thread: accumulators::add("bad records", 1) / accumulators::collect("samples", x)
//!     -> this task's map (thread-local, no lock; allocates only for a new name or item)
//!  task end (success): the map rides on the worker's "task finished" message
//!  coordinator: sums add up, lists are concatenated (at most MAX_LIST items in all)
//! ```
//!
//! Call them from any code that runs on a task's thread: sources, operators, sinks. A name
//! keeps the kind it was first used with; a use of the other kind is ignored. Accumulators
//! of a task that fails are dropped with it.

use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// The most items a collected list keeps (per task and per job); later items are dropped.
pub const MAX_LIST: usize = 1000;

/// The longest item of a collected list, in bytes (longer ones are cut at a character
/// boundary).
pub const MAX_ITEM: usize = 1000;

/// One accumulator's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulator {
    /// A counter or a sum (saturating).
    Sum(i64),
    /// A small collected list (at most [`MAX_LIST`] items).
    List(Vec<String>),
}

impl Accumulator {
    /// Merges `other` into this one (a sum adds, a list appends up to [`MAX_LIST`]; kinds
    /// that differ leave this one as it is).
    pub fn merge(&mut self, other: Accumulator) {
        match (self, other) {
            (Accumulator::Sum(a), Accumulator::Sum(b)) => *a = a.saturating_add(b),
            (Accumulator::List(a), Accumulator::List(b)) => {
                let room = MAX_LIST.saturating_sub(a.len());
                a.extend(b.into_iter().take(room));
            }
            _ => {}
        }
    }
}

/// Accumulators by name.
pub type Accumulators = BTreeMap<String, Accumulator>;

thread_local! {
    static TASK: RefCell<Accumulators> = const { RefCell::new(BTreeMap::new()) };
}

/// Adds `v` to the counter or sum `name` of the running task.
pub fn add(name: &str, v: i64) {
    TASK.with(|t| {
        let mut t = t.borrow_mut();
        match t.get_mut(name) {
            Some(a) => a.merge(Accumulator::Sum(v)),
            None => {
                t.insert(name.to_string(), Accumulator::Sum(v));
            }
        }
    });
}

/// Appends `item` to the list `name` of the running task (kept while the list has fewer
/// than [`MAX_LIST`] items; cut to [`MAX_ITEM`] bytes).
pub fn collect(name: &str, item: impl std::fmt::Display) {
    TASK.with(|t| {
        let mut t = t.borrow_mut();
        // A full list, or a name used as a sum: ignored before the item is formatted (a
        // sink may call this for every record).
        match t.get(name) {
            Some(Accumulator::List(l)) if l.len() >= MAX_LIST => return,
            Some(Accumulator::Sum(_)) => return,
            _ => {}
        }
        let mut s = item.to_string();
        if s.len() > MAX_ITEM {
            let mut cut = MAX_ITEM;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        match t.get_mut(name) {
            Some(a) => a.merge(Accumulator::List(vec![s])),
            None => {
                t.insert(name.to_string(), Accumulator::List(vec![s]));
            }
        }
    });
}

/// Takes the running task's accumulators (the task ended), leaving it none.
pub(crate) fn take() -> Accumulators {
    TASK.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

/// Swaps the calling thread's running task's accumulators with `other`: a thread that runs
/// several co-scheduled tasks swaps each one's in for its turn and out after it.
pub(crate) fn swap(other: &mut Accumulators) {
    TASK.with(|t| std::mem::swap(&mut *t.borrow_mut(), other));
}

/// Merges a task's accumulators into the job's.
pub(crate) fn merge_into(job: &mut Accumulators, task: Accumulators) {
    for (k, v) in task {
        match job.get_mut(&k) {
            Some(a) => a.merge(v),
            None => {
                job.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_lists_append_up_to_the_cap_and_kinds_do_not_mix() {
        let _ = take();
        add("n", 2);
        add("n", 3);
        collect("xs", "a");
        collect("xs", 7);
        add("xs", 1);
        collect("n", "ignored");
        let mut job = take();
        assert_eq!(job["n"], Accumulator::Sum(5));
        assert_eq!(job["xs"], Accumulator::List(vec!["a".into(), "7".into()]));
        assert!(take().is_empty(), "taken");
        for _ in 0..MAX_LIST + 5 {
            collect("xs", "b");
        }
        merge_into(&mut job, take());
        let Accumulator::List(l) = &job["xs"] else { panic!("a list") };
        assert_eq!(l.len(), MAX_LIST);
        collect("long", "é".repeat(MAX_ITEM));
        let Accumulator::List(l) = &take()["long"] else { panic!("a list") };
        assert!(l[0].len() <= MAX_ITEM && l[0].chars().all(|c| c == 'é'));
    }
}
