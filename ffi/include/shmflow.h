/*
 * shmflow.h: the C ABI of shmflow-ffi (libshmflow_ffi.so), the same-host transport that
 * flink/ plugs under Apache Flink's NettyShuffleEnvironment. Hand-written; keep in step
 * with ffi/src/lib.rs (ffi/tests/c_abi.rs exercises every function; ffi/tests/c_header.rs
 * compiles this header and checks it against the Rust signatures and the library's exports).
 *
 * Every function returns 0 (or a non-negative value where documented) on success and a
 * negative SHMFLOW_E* code on failure; shmflow_last_error() then has the message for the
 * calling thread. No function unwinds or aborts on bad input: null pointers, stale
 * handles, out-of-range numbers and malformed shared memory are all error codes.
 *
 * Handles are opaque 64-bit values; a closed handle is refused, never reused by accident
 * (a generation count is part of it). Timeouts are 0..=3600000 ms.
 */
#ifndef SHMFLOW_H
#define SHMFLOW_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMFLOW_OK 0
#define SHMFLOW_EINVAL (-1)  /* bad argument: null pointer, stale handle, out of range */
#define SHMFLOW_EAGAIN (-2)  /* nothing before the timeout (segment, ring room) */
#define SHMFLOW_EPEER (-3)   /* the other end closed the channel or its process died */
#define SHMFLOW_EIO (-4)     /* a system call failed (arena file, registry directory) */
#define SHMFLOW_EPROTO (-5)  /* the peer wrote something malformed into shared memory */
#define SHMFLOW_EPANIC (-6)  /* internal error caught at the boundary */
#define SHMFLOW_ENOENT (-7)  /* TaskManager not registered on this host, or not alive */
#define SHMFLOW_ECONFIG (-8) /* arena too small, other segment size, out of slots */

#define SHMFLOW_SIDE_CONSUMER 0
#define SHMFLOW_SIDE_PRODUCER 1

/* Message kind 1 is the transport's credit announcement (arg = credits); 2..255 are the
 * caller's. */
#define SHMFLOW_KIND_CREDIT 1
#define SHMFLOW_FLAG_COMPRESSED 1
/* Producer, data buffers only: the consumer's task may take it by polling; the consumer's
 * notify set is marked only when its task does not poll the channel (shmflow_task_polls).
 * Not carried to the consumer. A data buffer is a message of a caller's kind (not
 * SHMFLOW_KIND_CREDIT) whose data_type is Flink's DATA_BUFFER (1) or
 * DATA_BUFFER_WITH_CLEAR_END (8); shmflow_send refuses the flag on anything else
 * (SHMFLOW_EINVAL), so events always mark. */
#define SHMFLOW_FLAG_POLLABLE 2

/* One message: 4 ring slots in shared memory, this struct at the API. */
typedef struct shmflow_msg {
    int32_t kind;         /* 1..255 */
    int32_t segment;      /* segment carrying the payload, or -1 */
    int32_t size;         /* payload bytes (0 without a segment) */
    int32_t subpartition; /* Flink: subpartition index */
    int32_t seq;          /* Flink: sequence number */
    int32_t backlog;      /* Flink: sender backlog */
    int32_t data_type;    /* Flink: Buffer.DataType ordinal, 0..255 */
    int32_t flags;        /* SHMFLOW_FLAG_COMPRESSED | SHMFLOW_FLAG_POLLABLE, or 0 */
    int64_t arg;          /* free argument (credits for SHMFLOW_KIND_CREDIT) */
} shmflow_msg;

/* No typedef: the name shmflow_arena_info is the function below; use the struct tag. */
struct shmflow_arena_info {
    int32_t slot;          /* this TaskManager's worker slot */
    int32_t segment_size;  /* bytes per segment */
    int32_t segment_count; /* segments in all */
    int32_t free_segments; /* on the free stack now */
    uint8_t *data;         /* segment i starts at data + i * segment_size */
    uint64_t data_len;
};

/* Copies the thread's last error message (NUL-terminated, truncated to cap-1 bytes);
 * returns its full length, or -1 for a null buf with cap > 0. cap == 0: length only. */
int32_t shmflow_last_error(char *buf, size_t cap);

/* Creates /dev/shm/<name> (O_EXCL, 0600) or attaches to it; claims a worker slot;
 * registers tm_id (its slot and pid) in registry_dir. An arena nobody alive is
 * registered for is replaced. spin_ns: how long shmflow_wait spins before parking.
 * SHMFLOW_ECONFIG when arena_bytes holds fewer than 2 or more than 2^24 segments, or (when
 * this call creates the arena) exceeds the space free in /dev/shm. */
int32_t shmflow_arena_open(const char *name, const char *registry_dir, const char *tm_id,
                           uint64_t arena_bytes, uint32_t segment_size, uint64_t spin_ns,
                           uint64_t *out_arena);
/* Unregisters; unlinks the arena when no other live TaskManager is registered. Channels
 * consumers opened towards this TaskManager that it never accepted are failed (their
 * consumers see SHMFLOW_EPEER) and freed once their consumers close them. */
int32_t shmflow_arena_close(uint64_t arena);
int32_t shmflow_arena_info(uint64_t arena, struct shmflow_arena_info *out);
int32_t shmflow_segment_ptr(uint64_t arena, int32_t segment, uint8_t **out);

/* Liveness: the peer handle of a registered TaskManager whose process is alive (else
 * SHMFLOW_ENOENT): its worker slot in the low 32 bits, that slot's generation in the high
 * 32, never negative. Keep the handle, not the slot: after a TaskManager leaves or dies its
 * slot is registered again by another, with another generation. The state of a peer: 1
 * alive, 0 left cleanly, -1 died, 2 free (nobody registered in the slot, or its dead
 * holder was reclaimed) or another TaskManager's now. Only 1 is alive. A bare slot
 * (generation 0) asks about the slot, whoever holds it. */
int32_t shmflow_peer_lookup(uint64_t arena, const char *tm_id, int64_t *out_peer);
int32_t shmflow_peer_state(uint64_t arena, int64_t peer, int32_t *out);

/* Blocks (spin budget, then futex) until channels of `side` have news; writes up to max
 * channel ids; *out_n = 0 on timeout or after shmflow_wake / shmflow_arena_close. */
int32_t shmflow_wait(uint64_t arena, int32_t side, int32_t *ids, int32_t max,
                     int32_t timeout_ms, int32_t *out_n);
int32_t shmflow_wake(uint64_t arena, int32_t side);
/* How long shmflow_wait of `side` spins before parking (0..=10^9 ns; spin_ns of
 * shmflow_arena_open at first). A spin parks early when the core is contended. */
int32_t shmflow_set_spin(uint64_t arena, int32_t side, int64_t spin_ns);

/* Channels: the consumer connects to a producer slot, the producer accepts an id its
 * dispatcher saw. Status of the other end: 0 open, 1 closed, 2 died. Counters: buffers
 * out, bytes out, buffers in, bytes in. The second end to close frees what is queued.
 * Accepting a channel whose consumer already closed it returns SHMFLOW_EPEER and frees it
 * (with whatever the consumer queued in it). */
/* connect: to the peer handle of shmflow_peer_lookup (a bare slot is SHMFLOW_EINVAL);
 * SHMFLOW_EPEER unless shmflow_peer_state(producer_peer) is 1 (alive), before the channel
 * is opened and right after (a producer that left meanwhile gets no channel, and the
 * block is given back). */
int32_t shmflow_channel_connect(uint64_t arena, int64_t producer_peer, uint64_t *out_channel,
                                int32_t *out_id);
int32_t shmflow_channel_accept(uint64_t arena, int32_t id, uint64_t *out_channel);
int32_t shmflow_channel_close(uint64_t channel);
int32_t shmflow_channel_status(uint64_t channel, int32_t *out);
int32_t shmflow_channel_counters(uint64_t channel, uint64_t out[4]);

/* Segments: acquire one to write, send it with a message, the receiver releases it. */
int32_t shmflow_segment_acquire(uint64_t channel, int32_t timeout_ms, int32_t *out_segment);
int32_t shmflow_segment_release(uint64_t channel, int32_t segment);

/* Messages: send one (waits for ring room), poll a batch, announce credit (consumer). */
int32_t shmflow_send(uint64_t channel, const shmflow_msg *msg, int32_t timeout_ms);
int32_t shmflow_poll(uint64_t channel, shmflow_msg *out, int32_t max, int32_t *out_n);
int32_t shmflow_add_credit(uint64_t channel, int32_t n, int32_t timeout_ms);
/* Banked credit (consumer banks, producer takes; not ordered with messages: only for
 * channels whose initial credit is positive). Banking wakes the producer's dispatcher
 * only when its last take found nothing; a take that finds nothing returns 0 and asks
 * for that wake-up. */
int32_t shmflow_bank_credit(uint64_t channel, int32_t n);
int32_t shmflow_take_credit(uint64_t channel, int32_t *out_n);
/* Consumer: on = 1 while this end's task polls the data ring itself (its zero-copy
 * buffers' recyclers do): pollable data buffers then mark no notify set. on = 0 stops
 * (with a fence); poll once more after it, a buffer published meanwhile was not marked. */
int32_t shmflow_task_polls(uint64_t channel, int32_t on);

/* Online reclamation (shmflow::partition::reclaim): frees what dead TaskManagers left
 * (segments, channels, slots), exactly once per dead process whoever calls it. out: processes
 * reclaimed, segments freed, segments orphaned (their live reader frees them), channels
 * failed. Call it when a peer was seen dead (shmflow_channel_status == 2). */
int32_t shmflow_reclaim(uint64_t arena, uint64_t out[4]);

#ifdef __cplusplus
}
#endif
#endif /* SHMFLOW_H */
