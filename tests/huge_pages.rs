//! Arenas on 2 MiB huge pages (issue 14): asked for, used when the host has them reserved,
//! and otherwise 4 KiB pages with a note that says why (or an error, when they are
//! required). Which branch runs depends on the host (`/proc/sys/vm/nr_hugepages`); each
//! checks what it must, and an attacher maps the arena whatever it is made of.
//!
//! ```text
//!  create_memfd_with(IfReserved) ──MFD_HUGETLB──> page_size 2 MiB       (pages reserved)
//!                                └──fallback───> page_size 4 KiB + note (none free)
//!  create_memfd_with(Required)   ──────────────> 2 MiB, or ArenaError::Io naming them
//!  attach_fd(dup of the fd)      ──st_blksize──> the same pages, the same bytes
//! ```

use shmflow::memory::{Arena, ArenaConfig, HugePages, HUGE_PAGE};
use shmflow::sync::Ordering;

fn config() -> ArenaConfig {
    // About 3 MiB: two huge pages.
    ArenaConfig {
        segment_size: 32 * 1024,
        segment_count: 64,
        ring_capacity: 16,
        max_channels: 8,
        max_partitions: 4,
        max_gates: 4,
        max_channels_per_gate: 64,
        max_workers: 4,
        max_tasks: 4,
    }
}

/// Writes through `a`, reads through an attachment of its fd, and checks the page size.
fn attach_and_share(a: &Arena) {
    let fd = a.fd().expect("a memfd arena has an fd").try_clone_to_owned().expect("dup");
    let b = Arena::attach_fd(fd).expect("attach to the arena");
    assert_eq!(b.page_size(), a.page_size(), "the attacher maps the same pages");
    let last = a.segment_count() - 1;
    a.segment_word(last, a.segment_size() - 4).store(0x5eed_f00d, Ordering::Relaxed);
    assert_eq!(b.segment_word(last, b.segment_size() - 4).load(Ordering::Relaxed), 0x5eed_f00d);
}

#[test]
fn an_arena_is_on_huge_pages_when_reserved_and_says_why_not_otherwise() {
    let off = Arena::create_memfd_with(&config(), "pages-off", HugePages::Off).expect("4 KiB arena");
    assert_eq!(off.page_size(), 4096);
    assert!(off.huge_page_note().is_none(), "nothing was asked for, nothing to note");
    attach_and_share(&off);

    let maybe = Arena::create_memfd_with(&config(), "pages-if-reserved", HugePages::IfReserved)
        .expect("if-reserved never fails for want of huge pages");
    eprintln!("if-reserved: {} B pages, note {:?}", maybe.page_size(), maybe.huge_page_note());
    if maybe.page_size() == HUGE_PAGE {
        assert!(maybe.huge_page_note().is_none(), "huge pages were used: {:?}", maybe.huge_page_note());
        attach_and_share(&maybe);
    } else {
        assert_eq!(maybe.page_size(), 4096);
        let note = maybe.huge_page_note().expect("the fallback says why");
        assert!(note.contains("4 KiB") && note.contains("huge pages"), "note: {note}");
        attach_and_share(&maybe);
        drop(maybe);
        // With none to be had, requiring them is an error that names them.
        match Arena::create_memfd_with(&config(), "pages-required", HugePages::Required) {
            Err(e) => assert!(e.to_string().contains("huge pages"), "error: {e}"),
            // Another process reserved some in between: then they are used.
            Ok(a) => assert_eq!(a.page_size(), HUGE_PAGE),
        }
    }
}
