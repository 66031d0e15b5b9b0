package org.shmflow.flink;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLongArray;

import org.slf4j.Logger;

/**
 * Diagnosis of the latency tail (off unless the TaskManager runs with the environment
 * variable {@code SHMFLOW_DIAG_HOPS=1}): for buffers of ShuffleBench latency records (21
 * bytes each: a 4-byte length, the stream element tag, the key, and the source's
 * {@code System.nanoTime()} stamp, big-endian; each record of a buffer counts), histograms
 * of the delay from the stamp to each hop of ours (the producer's publication, by the task or by the dispatcher; the consumer's
 * {@code onBuffer}, by the dispatcher or by another thread), counts of why the task's direct
 * publication gave a buffer to the producer dispatcher, and a ring of the slow ones
 * (key, delay, when), logged when a channel closes. Never on unless asked for; when on, the
 * per-buffer path still allocates nothing (fixed arrays).
 */
final class Diag {
    static final boolean ON = "1".equals(System.getenv("SHMFLOW_DIAG_HOPS"));
    static final int P_DIRECT = 0;
    static final int P_DISPATCHER = 1;
    static final int C_DISPATCHER = 2;
    static final int C_OTHER = 3;
    static final int S_HOP = 4;
    static final int S_E2E = 5;
    private static final String[] NAMES = {"producer: task publishes", "producer: dispatcher publishes",
        "consumer: dispatcher delivers", "consumer: other thread delivers",
        "zero-copy buffer: onBuffer to recycled (hop, per buffer, not from the stamp)", "zero-copy buffer: stamp to recycled"};
    /** Per segment (masked), when a zero-copy buffer of it went to Flink, and its size. */
    private static final int SEG_MASK = 0xffff;
    private static final long[] DELIVERED_AT = new long[SEG_MASK + 1];
    private static final int[] DELIVERED_SIZE = new int[SEG_MASK + 1];
    private static final int KINDS = NAMES.length;
    /** Buckets: 1 us wide up to 16 us, then 8 per power of two. */
    private static final int NB = 16 + 8 * 40;
    private static final AtomicLongArray HIST = new AtomicLongArray(KINDS * NB);
    /** Records seen in the first this many ns after the first one are warm-up (as ShuffleBench's sink). */
    private static final long WARMUP_NS = 3_000_000_000L;
    /** Delays above this go into the slow ring. */
    private static final long SLOW_NS = 1_000_000L;
    private static final int RING = 4096;
    private static final long[] SLOW_KEY = new long[RING];
    private static final long[] SLOW_AT = new long[RING];
    private static final int[] SLOW_US = new int[RING];
    private static final byte[] SLOW_KIND = new byte[RING];
    private static final AtomicInteger SLOW_N = new AtomicInteger();
    private static volatile long first;
    /** Buffers seen by bit length of their size (to see which sizes the latency job sends). */
    private static final AtomicLongArray SIZES = new AtomicLongArray(16);

    private Diag() {}

    /**
     * Records hop {@code kind} of a buffer whose bytes start at {@code at} of the arena's
     * data: one entry per record in it (each record's own stamp), as the sink's histogram
     * counts; the slow ring gets the buffer's first record.
     */
    static void hop(int kind, ShmTransport t, int at, int size) {
        SIZES.incrementAndGet(Math.min(15, 32 - Integer.numberOfLeadingZeros(size)));
        if (size % 21 != 0 || size == 0) {
            return;
        }
        long now = System.nanoTime();
        long f = first;
        if (f == 0) {
            first = now;
            return;
        }
        if (now - f < WARMUP_NS) {
            return;
        }
        for (int r = size / 21 - 1; r >= 0; r--) {
            long stamp = t.data.getLong(at + 21 * r + 13);
            long d = now - stamp;
            if (r == 0) {
                hopAt(kind, d, t.data.getLong(at + 5));
            } else {
                HIST.incrementAndGet(kind * NB + bucket(d));
            }
        }
    }

    static final int D_LOCKED = 0;
    static final int D_REGISTERED = 1;
    static final int D_NOTIFIED = 2;
    static final int D_NO_CREDIT = 3;
    static final int D_HANDOFF = 4;
    static final int D_OTHER = 5;
    private static final String[] D_NAMES = {"reader lock held", "registered as available", "notification pending",
        "no credit", "hand-off (large buffer or nothing taken)", "other"};
    /** Why the task's direct publication gave a buffer to the producer dispatcher. */
    private static final AtomicLongArray DIRECT_REFUSED = new AtomicLongArray(D_NAMES.length);

    /** The direct publication gave way for {@code reason} (no-op unless on). */
    static void directRefused(int reason) {
        if (ON) {
            DIRECT_REFUSED.incrementAndGet(reason);
        }
    }

    /** A zero-copy buffer of segment {@code seg} goes to Flink now. */
    static void delivered(int seg, int size) {
        DELIVERED_AT[seg & SEG_MASK] = System.nanoTime();
        DELIVERED_SIZE[seg & SEG_MASK] = size;
    }

    /** The zero-copy buffer of segment {@code seg} came back (its bytes are still there). */
    static void recycled(ShmTransport t, int seg) {
        long at = DELIVERED_AT[seg & SEG_MASK];
        int size = DELIVERED_SIZE[seg & SEG_MASK];
        DELIVERED_AT[seg & SEG_MASK] = 0;
        if (at == 0 || first == 0 || System.nanoTime() - first < WARMUP_NS) {
            return;
        }
        hopAt(S_HOP, System.nanoTime() - at, t.data.getLong(seg * t.segmentSize + 5));
        hop(S_E2E, t, seg * t.segmentSize, size);
    }

    private static void hopAt(int kind, long d, long key) {
        HIST.incrementAndGet(kind * NB + bucket(d));
        if (d > SLOW_NS) {
            int i = SLOW_N.getAndIncrement();
            if (i < RING) {
                SLOW_KEY[i] = key;
                SLOW_AT[i] = System.nanoTime();
                SLOW_US[i] = (int) Math.min(Integer.MAX_VALUE, d / 1000);
                SLOW_KIND[i] = (byte) kind;
            }
        }
    }

    static int bucket(long ns) {
        long us = Math.max(0, ns) / 1000;
        if (us < 16) {
            return (int) us;
        }
        int e = 63 - Long.numberOfLeadingZeros(us);
        int sub = (int) ((us >>> (e - 3)) & 7);
        return Math.min(NB - 1, 16 + (e - 4) * 8 + sub);
    }

    static long bucketLowUs(int b) {
        if (b < 16) {
            return b;
        }
        int e = (b - 16) / 8 + 4;
        int sub = (b - 16) % 8;
        return (8L + sub) << (e - 3);
    }

    /** Logs and resets what was recorded (a channel closed). */
    static synchronized void dump(Logger log, String why) {
        StringBuilder sb = new StringBuilder("shmflow diag (" + why + "):");
        boolean any = false;
        for (int k = 0; k < KINDS; k++) {
            long n = 0;
            for (int b = 0; b < NB; b++) {
                n += HIST.get(k * NB + b);
            }
            if (n == 0) {
                continue;
            }
            any = true;
            sb.append("\n  ").append(NAMES[k]).append(": n ").append(n);
            double[] qs = {0.5, 0.9, 0.99, 0.999, 1.0};
            String[] qn = {"p50", "p90", "p99", "p99.9", "max"};
            int qi = 0;
            long c = 0;
            for (int b = 0; b < NB && qi < qs.length; b++) {
                c += HIST.get(k * NB + b);
                while (qi < qs.length && c >= Math.ceil(qs[qi] * n)) {
                    sb.append(' ').append(qn[qi]).append(' ').append(bucketLowUs(b)).append("us");
                    qi++;
                }
            }
            sb.append(" | >=1ms ");
            long over = 0;
            for (int b = bucket(1_000_000); b < NB; b++) {
                over += HIST.get(k * NB + b);
            }
            sb.append(over);
        }
        sb.append("\n  direct publication gave way:");
        for (int i = 0; i < D_NAMES.length; i++) {
            sb.append(' ').append(D_NAMES[i]).append(' ').append(DIRECT_REFUSED.getAndSet(i, 0)).append(';');
        }
        sb.append("\n  sizes by bit length:");
        for (int i = 0; i < 16; i++) {
            sb.append(' ').append(SIZES.getAndSet(i, 0));
        }
        int s = Math.min(RING, SLOW_N.get());
        if (any) {
            sb.append("\n  slow (kind key at_ms delay_us):");
            for (int i = 0; i < s; i++) {
                sb.append(' ').append(SLOW_KIND[i]).append(':').append(SLOW_KEY[i]).append(':')
                        .append(SLOW_AT[i] / 1_000_000).append(':').append(SLOW_US[i]);
            }
        }
        log.info(sb.toString());
        for (int i = 0; i < KINDS * NB; i++) {
            HIST.set(i, 0);
        }
        SLOW_N.set(0);
        first = 0;
    }
}
