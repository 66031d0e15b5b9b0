//! Loom model of the wake-up protocol (DESIGN.md §4.5): the `EventCount` on a futex word
//! (waiter flag, re-check, wait; publish, then notify only if someone announced itself),
//! and the `Waiter` spin-then-park policy built on it. The event count used is a channel
//! block's `consumer_wake` in a heap arena, the one the shipping code parks on; under loom
//! its futex is the crate's Mutex + Condvar emulation, which keeps the kernel's contract
//! (the value check and the decision to sleep are atomic with respect to a wake, and a
//! wake with nobody asleep is lost).
//!
//! What is modelled:
//! - a waiter doing prepare_wait / re-check / wait by hand, for two successive
//!   publications, against a notifier that publishes (Release store) then notifies;
//! - two waiters parked on the same event count and one notification (it must wake all);
//! - `Waiter::wait` with `WaitPolicy::park()` (check, then park) for two publications.
//!
//! What a failure means: loom reports a deadlock when a waiter sleeps forever, i.e. a lost
//! wake-up: the notifier missed the WAITING flag while the waiter's re-check missed the
//! published value (the two SeqCst fences of the Dekker pair do not do their job), or the
//! epoch bump / flag reset leaves a later round's waiter asleep. A failed assertion means
//! a waiter returned without the value being published.
//!
//! On loom's fences: loom models `fence(SeqCst)` by joining every SeqCst fence into one
//! global causality (a total order that also synchronizes), which is at least as strong as
//! the C++20 fence rules the Dekker argument relies on; a lost wake-up found here is a real
//! one, but loom could miss a bug that only the weaker hardware/C++ semantics expose.
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::memory::Arena;
use shmflow::sync::{AtomicU32, EventCount, Ordering, WaitOutcome, WaitPolicy, Waiter};
use std::sync::Arc;

/// The published value the waiters wait for (a loom atomic under `cfg(loom)`).
type Published = Arc<AtomicU32>;

fn wake(arena: &Arena) -> &EventCount {
    &arena.channels()[0].consumer_wake
}

/// The notifier: publishes 1, 2, ..., `rounds`, notifying after each.
fn publish(arena: &Arena, value: &AtomicU32, rounds: u32) {
    for k in 1..=rounds {
        // Release: pairs with the waiters' Acquire loads of the value.
        value.store(k, Ordering::Release);
        wake(arena).notify();
    }
}

/// The event-count protocol by hand: wait until `value >= target`.
fn wait_by_hand(ec: &EventCount, value: &AtomicU32, target: u32) {
    loop {
        // Acquire: pairs with the Release store in `publish`.
        if value.load(Ordering::Acquire) >= target {
            return;
        }
        let token = ec.prepare_wait();
        // The re-check after announcing ourselves; Acquire as above.
        if value.load(Ordering::Acquire) >= target {
            return;
        }
        // Woken, spuriously or because the word moved on: loop and re-check.
        let _ = ec.wait(token, None);
    }
}

/// One waiter, two publications: the waiter must see both without sleeping forever, and
/// the second round must work after the first one's notify cleared the WAITING flag.
#[test]
fn prepare_recheck_wait_no_lost_wakeup() {
    common::check("event_count::prepare_recheck_wait_no_lost_wakeup", None, || {
        let arena = common::tiny_arena();
        let value: Published = Arc::new(AtomicU32::new(0));
        let waiter = {
            let (arena, value) = (Arc::clone(&arena), Arc::clone(&value));
            thread::spawn(move || {
                for target in 1..=2 {
                    wait_by_hand(wake(&arena), &value, target);
                    // Relaxed: only checks what the Acquire load above already saw.
                    assert!(value.load(Ordering::Relaxed) >= target);
                }
            })
        };
        publish(&arena, &value, 2);
        waiter.join().unwrap();
    });
}

/// Two waiters on one event count and a single publication: the notifier's one wake must
/// reach both (FUTEX_WAKE of every sleeper).
#[test]
fn one_notify_wakes_every_waiter() {
    common::check("event_count::one_notify_wakes_every_waiter", Some(4), || {
        let arena = common::tiny_arena();
        let value: Published = Arc::new(AtomicU32::new(0));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (arena, value) = (Arc::clone(&arena), Arc::clone(&value));
                thread::spawn(move || wait_by_hand(wake(&arena), &value, 1))
            })
            .collect();
        publish(&arena, &value, 1);
        for w in waiters {
            w.join().unwrap();
        }
    });
}

/// The shipping wait policy: `Waiter::wait` with `WaitPolicy::park()` (a zero spin budget:
/// one check, then the park phase), for two publications; no lost wake-up, and each wait
/// returns the value its poll produced. The test also asserts that the search reached
/// executions where the waiter really parked (with a spin phase, loom's progress rule for
/// yielding threads would make the spinning poll see every publication and never park).
#[test]
fn waiter_park_policy_no_lost_wakeup() {
    common::check("event_count::waiter_park_policy_no_lost_wakeup", None, || {
        let arena = common::tiny_arena();
        let value: Published = Arc::new(AtomicU32::new(0));
        let waiter = {
            let (arena, value) = (Arc::clone(&arena), Arc::clone(&value));
            thread::spawn(move || {
                let mut waiter = Waiter::new(WaitPolicy::park());
                for target in 1..=2 {
                    let outcome = waiter.wait(wake(&arena), None, || {
                        // Acquire: pairs with the Release store in `publish`.
                        let v = value.load(Ordering::Acquire);
                        (v >= target).then_some(v)
                    });
                    match outcome {
                        WaitOutcome::Ready(v) => assert!(v >= target),
                        WaitOutcome::TimedOut => panic!("an untimed wait timed out"),
                    }
                }
                if waiter.parks > 0 {
                    // Relaxed: statistic outside the model.
                    PARKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        publish(&arena, &value, 2);
        waiter.join().unwrap();
    });
    // Relaxed: the search is over.
    assert!(PARKED.load(std::sync::atomic::Ordering::Relaxed) > 0, "no execution reached the park phase");
}

// Counts, outside the model (a plain std atomic, not loom's), the executions in which the
// waiter parked at least once.
#[allow(clippy::disallowed_types)]
static PARKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
