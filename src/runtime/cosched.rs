//! Co-scheduling ([`RuntimeConfig::co_schedule`](super::RuntimeConfig::co_schedule)): a
//! worker's tasks of one pipeline slice take turns on one thread instead of a thread each.
//!
//! ```text
//!  thread of slice s:  driver (any task: it runs its body as on a thread of its own)
//!    every wait of the driver (for input, for buffers, for its consumers; a source's own
//!    waits through take_turns) -> turns(): every passenger (a sink: an input and no
//!    output) takes one turn: it reads what its gate holds now, without waiting
//!  driver ended -> the passengers take turns until each has read its end (or failed)
//! ```
//!
//! A record the driver sends to a passenger is read in the driver's next wait, by the same
//! thread: no thread switch and no wake-up. A driver whose output is full waits for its
//! consumers, and its wait gives the passengers their turns, so a passenger that consumes it
//! makes room (backpressure cannot deadlock the thread). A passenger never waits: its turn
//! returns when its input has nothing more.

use crate::error::Result;
use std::cell::RefCell;

/// What a task's turn did ([`TaskSteps::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// It made progress (read records, or an event).
    Busy,
    /// Its input had nothing: it waits for the next turn.
    Idle,
    /// Its input ended and it finished its output: it takes no more turns.
    Ended,
}

/// A subtask run in turns on a thread it shares with other tasks: each turn does what it
/// can without waiting ([`super::InputSteps`] for a vertex fed by an exchange).
pub trait TaskSteps {
    /// One turn.
    ///
    /// # Errors
    /// The task's failure: it takes no more turns.
    fn step(&mut self) -> Result<Turn>;
}

/// A co-scheduled task as its worker runs it: a turn, after which the worker has reported
/// how it ended if it did ([`Turn::Ended`], also for a failure).
pub(super) trait Passenger {
    /// One turn.
    fn turn(&mut self) -> Turn;
}

thread_local! {
    /// The passengers of the calling thread's driver.
    static PASSENGERS: RefCell<Vec<Box<dyn Passenger>>> = const { RefCell::new(Vec::new()) };
}

/// Makes `passengers` take turns in every wait of the calling thread (see the module).
pub(super) fn board(passengers: Vec<Box<dyn Passenger>>) {
    PASSENGERS.with(|p| p.borrow_mut().extend(passengers));
    crate::sync::set_co_turns(Some(turns));
}

/// One turn for each passenger of the calling thread; whether any made progress (or
/// ended). Nothing when called from inside a turn (a passenger's own wait).
fn turns() -> bool {
    PASSENGERS.with(|p| {
        let Ok(mut passengers) = p.try_borrow_mut() else {
            return false;
        };
        let mut progressed = false;
        passengers.retain_mut(|p| match p.turn() {
            Turn::Busy => {
                progressed = true;
                true
            }
            Turn::Idle => true,
            Turn::Ended => {
                progressed = true;
                false
            }
        });
        progressed
    })
}

/// After the driver ended: turns until every passenger has ended, then the thread is an
/// ordinary one again. Each passenger ends at the end of its input, at its failure or when
/// the worker's tasks are cancelled (its idle turn checks).
pub(super) fn run_to_end() {
    let mut last_yield = crate::sync::now_nanos();
    loop {
        let progressed = turns();
        if PASSENGERS.with(|p| p.borrow().is_empty()) {
            break;
        }
        if !progressed {
            crate::sync::spin_loop();
            // As a spinning wait: the core is given away every SPIN_YIELD_NS.
            let now = crate::sync::now_nanos();
            if now.wrapping_sub(last_yield) >= crate::sync::SPIN_YIELD_NS {
                crate::sync::yield_now();
                last_yield = crate::sync::now_nanos();
            }
        }
    }
    crate::sync::set_co_turns(None);
}

/// For a source that waits for something of its own between records (a rate-limited
/// generator waiting for a record's due time): on a thread of co-scheduled tasks
/// ([`RuntimeConfig::co_schedule`](super::RuntimeConfig::co_schedule)) it gives each of the
/// other tasks one turn and answers whether any made progress; `None` on a thread that runs
/// one task (then wait as usual: sleep, yield). Such a source should poll its condition
/// and call this in between rather than sleep, since the tasks that share its thread run
/// only while it waits. The runtime's own waits (for input, buffers, consumers) do this
/// already.
pub fn take_turns() -> Option<bool> {
    crate::sync::take_co_turns()
}

#[cfg(test)]
mod tests {
    use super::{board, run_to_end, take_turns, Passenger, Turn};
    use std::cell::Cell;
    use std::rc::Rc;

    /// Busy `n` turns, then ended; counts its turns.
    struct Counted {
        left: u32,
        turns: Rc<Cell<u32>>,
        nested: bool,
    }

    impl Passenger for Counted {
        fn turn(&mut self) -> Turn {
            self.turns.set(self.turns.get() + 1);
            if self.nested {
                // A turn taken inside a turn does nothing.
                assert_eq!(take_turns(), Some(false));
            }
            if self.left == 0 {
                return Turn::Ended;
            }
            self.left -= 1;
            Turn::Busy
        }
    }

    #[test]
    fn passengers_take_turns_until_they_end_and_the_thread_is_plain_again() {
        std::thread::spawn(|| {
            assert_eq!(take_turns(), None);
            let (a, b) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
            board(vec![
                Box::new(Counted { left: 2, turns: a.clone(), nested: true }),
                Box::new(Counted { left: 5, turns: b.clone(), nested: false }),
            ]);
            assert_eq!(take_turns(), Some(true));
            assert_eq!((a.get(), b.get()), (1, 1));
            run_to_end();
            // 2 busy turns and the ending one; 5 and 1.
            assert_eq!((a.get(), b.get()), (3, 6));
            assert_eq!(take_turns(), None);
        })
        .join()
        .unwrap();
    }
}
