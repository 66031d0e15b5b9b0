/*
 * Counters of the transport, registered in the TaskManager's metric group.
 */
package org.shmflow.flink;

import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.metrics.ThreadSafeSimpleCounter;

import java.util.concurrent.atomic.AtomicLong;
import java.util.function.LongSupplier;

/**
 * Metrics under the TaskManager's group {@code shmflow}: buffers and bytes that went out and
 * came in through shared memory (and how many of those reached Flink without a copy), channels connected through shared memory and partition
 * request clients handed to Netty (TaskManagers on other hosts, or the fallback), and the
 * arena's free segments. Process-wide totals are kept too (all TaskManagers of a MiniCluster
 * live in one JVM), for tests. Counters are thread safe: task threads publish and receive
 * buffers besides the dispatchers.
 */
final class ShmMetrics {
    static final AtomicLong TOTAL_BUFFERS_OUT = new AtomicLong();
    static final AtomicLong TOTAL_BYTES_OUT = new AtomicLong();
    static final AtomicLong TOTAL_BUFFERS_IN = new AtomicLong();
    static final AtomicLong TOTAL_BYTES_IN = new AtomicLong();
    /** Of TOTAL_BUFFERS_IN: handed to Flink as arena slices (zero copy). */
    static final AtomicLong TOTAL_ZERO_COPY_IN = new AtomicLong();
    /** Of TOTAL_BUFFERS_IN: copied because zero copy's segment limit was reached. */
    static final AtomicLong TOTAL_ZERO_COPY_CAPPED = new AtomicLong();
    /** Of TOTAL_BUFFERS_OUT: published by the thread that made them available (shmflow.producer.direct). */
    static final AtomicLong TOTAL_DIRECT_OUT = new AtomicLong();
    /** Buffers a direct publication left to the producer dispatcher because the data ring was full. */
    static final AtomicLong TOTAL_DIRECT_RING_FULL = new AtomicLong();
    /** Of TOTAL_BUFFERS_IN: delivered by the thread that announced credit (shmflow.consumer.deliver-on-credit). */
    static final AtomicLong TOTAL_ON_CREDIT_IN = new AtomicLong();
    /** Of TOTAL_BUFFERS_IN: delivered by a zero-copy buffer's recycler polling its channel (shmflow.consumer.task-polls). */
    static final AtomicLong TOTAL_ON_RECYCLE_IN = new AtomicLong();
    /** Producer side: takes of banked credit that found some (shmflow.consumer.banked-credit). */
    static final AtomicLong TOTAL_CREDIT_TAKES = new AtomicLong();
    static final AtomicLong TOTAL_SHM_CHANNELS = new AtomicLong();
    static final AtomicLong TOTAL_NETTY_CLIENTS = new AtomicLong();

    private final Counter buffersOut = new ThreadSafeSimpleCounter();
    private final Counter bytesOut = new ThreadSafeSimpleCounter();
    private final Counter buffersIn = new ThreadSafeSimpleCounter();
    private final Counter bytesIn = new ThreadSafeSimpleCounter();
    private final Counter zeroCopyIn = new ThreadSafeSimpleCounter();
    private final Counter zeroCopyCapped = new ThreadSafeSimpleCounter();
    private final Counter directOut = new ThreadSafeSimpleCounter();
    private final Counter directRingFull = new ThreadSafeSimpleCounter();
    private final Counter onCreditIn = new ThreadSafeSimpleCounter();
    private final Counter creditTakes = new ThreadSafeSimpleCounter();
    private final Counter onRecycleIn = new ThreadSafeSimpleCounter();
    private final Counter shmChannels = new ThreadSafeSimpleCounter();
    private final Counter nettyClients = new ThreadSafeSimpleCounter();

    ShmMetrics(MetricGroup parent) {
        if (parent != null) {
            MetricGroup g = parent.addGroup("shmflow");
            g.counter("buffersOutShm", buffersOut);
            g.counter("bytesOutShm", bytesOut);
            g.counter("buffersInShm", buffersIn);
            g.counter("bytesInShm", bytesIn);
            g.counter("buffersInZeroCopy", zeroCopyIn);
            g.counter("buffersInCopiedAtLimit", zeroCopyCapped);
            g.counter("buffersOutDirect", directOut);
            g.counter("buffersOutDirectRingFull", directRingFull);
            g.counter("buffersInOnCredit", onCreditIn);
            g.counter("creditTakesBanked", creditTakes);
            g.counter("buffersInOnRecycle", onRecycleIn);
            g.counter("channelsShm", shmChannels);
            g.counter("clientsNetty", nettyClients);
        }
    }

    /** Registers the arena's free-segment gauge once the arena is open. */
    void arenaGauges(MetricGroup parent, LongSupplier free, LongSupplier total) {
        if (parent != null) {
            MetricGroup g = parent.addGroup("shmflow");
            g.gauge("arenaFreeSegments", free::getAsLong);
            g.gauge("arenaSegments", total::getAsLong);
        }
    }

    void sent(int bytes) {
        buffersOut.inc();
        bytesOut.inc(bytes);
        TOTAL_BUFFERS_OUT.incrementAndGet();
        TOTAL_BYTES_OUT.addAndGet(bytes);
    }

    /** A buffer (counted by {@link #sent}) went out without the producer dispatcher. */
    void direct() {
        directOut.inc();
        TOTAL_DIRECT_OUT.incrementAndGet();
    }

    /** A direct publication found the data ring full and left its buffer to the dispatcher. */
    void directRingFull() {
        directRingFull.inc();
        TOTAL_DIRECT_RING_FULL.incrementAndGet();
    }

    /** {@code n} buffers (counted by {@link #received}) were delivered without the consumer dispatcher. */
    void onCredit(int n) {
        onCreditIn.inc(n);
        TOTAL_ON_CREDIT_IN.addAndGet(n);
    }

    /** {@code n} buffers delivered by a zero-copy buffer's recycler (shmflow.consumer.task-polls). */
    void onRecycle(int n) {
        onRecycleIn.inc(n);
        TOTAL_ON_RECYCLE_IN.addAndGet(n);
    }

    /** The producer took banked credit (instead of a credit message through its dispatcher). */
    void creditTaken() {
        creditTakes.inc();
        TOTAL_CREDIT_TAKES.incrementAndGet();
    }

    /**
     * A data buffer (counted by {@link #received}) was copied because this TaskManager held
     * shmflow.consumer.zero-copy-max-segments zero-copy buffers already.
     */
    void copiedAtLimit() {
        zeroCopyCapped.inc();
        TOTAL_ZERO_COPY_CAPPED.incrementAndGet();
    }

    void received(int bytes, boolean zeroCopy) {
        if (zeroCopy) {
            zeroCopyIn.inc();
            TOTAL_ZERO_COPY_IN.incrementAndGet();
        }
        buffersIn.inc();
        bytesIn.inc(bytes);
        TOTAL_BUFFERS_IN.incrementAndGet();
        TOTAL_BYTES_IN.addAndGet(bytes);
    }

    void channelOpened() {
        shmChannels.inc();
        TOTAL_SHM_CHANNELS.incrementAndGet();
    }

    void nettyClient() {
        nettyClients.inc();
        TOTAL_NETTY_CLIENTS.incrementAndGet();
    }
}
