/*
 * One TaskManager's attachment to the host's shared arena: the consumer and producer
 * dispatcher threads that stand where Netty's client and server event loops stand.
 */
package org.shmflow.flink;

import org.apache.flink.core.memory.MemorySegment;
import org.apache.flink.core.memory.MemorySegmentFactory;
import org.apache.flink.runtime.clusterframework.types.ResourceID;
import org.apache.flink.runtime.io.network.TaskEventPublisher;
import org.apache.flink.runtime.io.network.buffer.Buffer;
import org.apache.flink.runtime.io.network.partition.ResultPartitionProvider;
import org.apache.flink.runtime.io.network.partition.consumer.InputChannelID;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The shared-memory transport of one TaskManager.
 *
 * <pre>
 *  consumer side (this TM reads)                 producer side (this TM writes)
 *  ShmPartitionRequestClient --(caller thread)--> [credit ring] --> producer dispatcher
 *     requestSubpartition / credit / resume ...                     ShmViewReader per channel
 *  consumer dispatcher <-- [data ring] <------------------------------ (Netty's PartitionRequestQueue)
 *     RemoteInputChannel.onBuffer / onEmptyBuffer / onSenderBacklog / onError
 * </pre>
 *
 * Credit skips the ring on channels with positive initial credit
 * (shmflow.consumer.banked-credit): the caller thread banks it in the channel block and
 * the producer's reader takes it when its own credit is used up; the producer dispatcher
 * is woken (its channel marked, no message) only when such a take found nothing.
 *
 * Both dispatchers block in {@code Native.await} (a spin budget, then the futex) when idle.
 * Everything that touches a producer-side reader runs on the producer dispatcher, as
 * everything on a Netty server channel runs on its event loop, with one exception: with
 * {@code shmflow.producer.direct} the thread that makes a buffer available publishes it
 * itself when the reader is idle and has credit ({@link ShmViewReader#notifyDataAvailable}).
 * So every access to a reader's state holds its {@link ShmViewReader#lock}: the dispatcher
 * takes it, the publishing thread only tries it (and leaves the buffer to the dispatcher
 * when it is taken), so neither waits for the other across Flink's own locks.
 */
final class ShmTransport implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(ShmTransport.class);
    /** How often dispatchers look at their peers' processes. */
    static final long LIVENESS_NANOS = TimeUnit.MILLISECONDS.toNanos(200);

    final long arena;
    final ByteBuffer data;
    /**
     * The same data region as one Flink memory segment (never freed: the mapping is the
     * arena's), so a buffer's bytes are copied in or out without a ByteBuffer view per buffer.
     */
    final MemorySegment dataSegment;
    /**
     * Per arena segment, a Flink memory segment over it for zero-copy buffers (never freed:
     * the mapping is the arena's), so a zero-copy buffer allocates no view of its own. All
     * made in the constructor, before the dispatcher threads start (which publishes them).
     */
    private final MemorySegment[] segmentViews;
    final int segmentSize;
    final int slot;
    final int timeoutMs;
    /** Consumer side: deliver arena slices to Flink instead of copying (shmflow.consumer.zero-copy). */
    final boolean zeroCopy;
    /** How often the default zero-copy cap counts the TaskManagers attached to the arena. */
    static final long ZERO_COPY_CAP_REFRESH_MS = 1000;
    /**
     * Most segments held as zero-copy buffers at once: shmflow.consumer.zero-copy-max-segments
     * when set, else {@link #defaultZeroCopyMax} of the TaskManagers alive on the arena,
     * recounted every {@link #ZERO_COPY_CAP_REFRESH_MS} on {@link #delayed} (never on the
     * buffer path). A lowered cap takes effect as held segments are recycled.
     */
    private volatile int zeroCopyMax;
    /** shmflow.consumer.zero-copy-max-segments, or 0 for the host-wide default. */
    private final int zeroCopyMaxConfigured;
    /** The registry directory the arena's TaskManagers register in (shmflow.registry.dir). */
    private final String registryDir;
    /** Segments held as zero-copy buffers now (taken by {@link #takeZeroCopySlot}). */
    private final AtomicInteger zeroCopyHeld = new AtomicInteger();
    /** Producer side: publish from the thread that made the buffer available (shmflow.producer.direct). */
    final boolean direct;
    /** Largest buffer the direct path publishes itself (shmflow.producer.direct-max-bytes). */
    final int directMaxBytes;
    /** Consumer side: the thread announcing credit delivers what is queued (shmflow.consumer.deliver-on-credit). */
    final boolean deliverOnCredit;
    /** Consumer side: credit goes to the channel's bank, not the ring (shmflow.consumer.banked-credit). */
    final boolean bankedCredit;
    /** Consumer side: zero-copy buffers' recyclers poll their channel (shmflow.consumer.task-polls). */
    final boolean taskPolls;
    /** Spin budget of the consumer dispatcher while it receives full buffers (shmflow.spin-ns). */
    private final long spinNs;
    /** Its spin budget while it receives small (flushed) buffers (shmflow.consumer.spin-ns). */
    private final long consumerSpinNs;
    /**
     * Upper bound of {@link #flushedMaxBytes}: with the default 32 KiB segments, a buffer of
     * at most 8 KiB is taken for a flushed one.
     */
    static final int FLUSHED_MAX_BYTES = 8 * 1024;
    /**
     * Largest data buffer the consumer dispatcher takes for a flushed one (a job slower than
     * the pipeline) when it picks its spin budget: {@link #flushedMaxBytes(int)} of the
     * segment size. Full buffers of a busy job fill a whole segment, so they are larger.
     */
    final int flushedMaxBytes;
    /**
     * The last data buffer delivered was at most {@link #flushedMaxBytes}: a flushed buffer of
     * a job slower than the pipeline (buffer timeout 0, a low rate), whose records wait for
     * the consumer dispatcher, which then spins {@link #consumerSpinNs} to be awake when
     * the next one arrives. Full buffers (a busy job, whose threads need the cores) get
     * {@link #spinNs}. Written by whichever thread delivers; a stale read only delays the
     * switch by one wait.
     */
    volatile boolean lastBufferSmall = true;
    final String arenaName;
    final ResourceID self;
    final ResultPartitionProvider partitionProvider;
    final TaskEventPublisher taskEventPublisher;
    final ShmMetrics metrics;

    // --- consumer side ---
    final ConcurrentHashMap<Integer, ClientChannel> clientById = new ConcurrentHashMap<>();
    /**
     * Channels whose recycler asked for a poll it could not do (it gave up on the lock after
     * its bound, see ClientChannel#pollFromRecycler): the consumer dispatcher drains them.
     */
    private final ConcurrentLinkedQueue<ClientChannel> pollsHandedOff = new ConcurrentLinkedQueue<>();
    final ConcurrentHashMap<InputChannelID, ClientChannel> clientByInput = new ConcurrentHashMap<>();
    /** Partition requests with a delay (retriggered requests). */
    final ScheduledExecutorService delayed;

    // --- producer side (dispatcher thread only, except the queues) ---
    private final Map<Integer, ShmViewReader> readers = new HashMap<>();
    private final ArrayDeque<ShmViewReader> availableReaders = new ArrayDeque<>();
    /** Readers whose view announced data, from task threads. */
    final ConcurrentLinkedQueue<ShmViewReader> notified = new ConcurrentLinkedQueue<>();
    /** Work for the producer dispatcher from other threads. */
    final ConcurrentLinkedQueue<Runnable> producerTasks = new ConcurrentLinkedQueue<>();
    private volatile boolean producerParked;

    /** Transports of this JVM that are attached (all TaskManagers of a MiniCluster; tests). */
    private static final java.util.Set<ShmTransport> LIVE = ConcurrentHashMap.newKeySet();

    private volatile boolean running = true;
    private final Thread consumerThread;
    private final Thread producerThread;

    ShmTransport(
            long arena,
            String arenaName,
            String registryDir,
            ResourceID self,
            int timeoutMs,
            boolean zeroCopy,
            int zeroCopyMaxSegments,
            boolean direct,
            int directMaxBytes,
            boolean deliverOnCredit,
            boolean bankedCredit,
            boolean taskPolls,
            long spinNs,
            long consumerSpinNs,
            ResultPartitionProvider partitionProvider,
            TaskEventPublisher taskEventPublisher,
            ShmMetrics metrics)
            throws IOException {
        this.arena = arena;
        this.arenaName = arenaName;
        this.registryDir = registryDir;
        this.self = self;
        this.timeoutMs = timeoutMs;
        this.zeroCopy = zeroCopy;
        this.direct = direct;
        this.directMaxBytes = directMaxBytes;
        this.deliverOnCredit = deliverOnCredit;
        this.bankedCredit = bankedCredit;
        this.taskPolls = taskPolls && zeroCopy;
        this.spinNs = spinNs;
        this.consumerSpinNs = consumerSpinNs;
        this.partitionProvider = partitionProvider;
        this.taskEventPublisher = taskEventPublisher;
        this.metrics = metrics;
        long[] info = new long[5];
        int rc = Native.info(arena, info);
        if (rc < 0) {
            throw Native.error("arena info", rc);
        }
        this.slot = (int) info[0];
        this.segmentSize = (int) info[1];
        this.flushedMaxBytes = flushedMaxBytes(segmentSize);
        ByteBuffer d = Native.data(arena);
        if (d == null) {
            throw new IOException("shmflow: mapping the data region failed: " + Native.lastError());
        }
        this.data = d;
        this.dataSegment = MemorySegmentFactory.wrapOffHeapMemory(d);
        this.segmentViews = new MemorySegment[d.capacity() / segmentSize];
        for (int i = 0; i < segmentViews.length; i++) {
            ByteBuffer v = d.duplicate();
            v.limit((i + 1) * segmentSize).position(i * segmentSize);
            segmentViews[i] = MemorySegmentFactory.wrapOffHeapMemory(v.slice());
        }
        if (zeroCopyMaxSegments < 0) {
            throw new IOException("shmflow.consumer.zero-copy-max-segments must not be negative, not " + zeroCopyMaxSegments);
        }
        this.zeroCopyMaxConfigured = zeroCopyMaxSegments;
        String tag = self.getResourceIdString();
        this.delayed = Executors.newSingleThreadScheduledExecutor(r -> daemon(r, "shmflow-delay " + tag));
        refreshZeroCopyMax();
        if (zeroCopy && zeroCopyMaxSegments == 0) {
            delayed.scheduleWithFixedDelay(
                    this::refreshZeroCopyMax, ZERO_COPY_CAP_REFRESH_MS, ZERO_COPY_CAP_REFRESH_MS, TimeUnit.MILLISECONDS);
        }
        this.consumerThread = daemon(this::consumerLoop, "shmflow-consumer " + tag);
        this.producerThread = daemon(this::producerLoop, "shmflow-producer " + tag);
        consumerThread.start();
        producerThread.start();
        LIVE.add(this);
    }

    /**
     * The default zero-copy cap of one TaskManager: a quarter of the arena's {@code segments}
     * shared by the {@code liveTaskManagers} attached to it (every TaskManager of the host
     * consumes from the same arena, so together they hold at most a quarter and producers
     * keep the rest to publish into), but at least 1 so zero copy stays on in a tiny arena.
     */
    static int defaultZeroCopyMax(long segments, int liveTaskManagers) {
        long cap = segments / 4 / Math.max(1, liveTaskManagers);
        return (int) Math.max(1, Math.min(Integer.MAX_VALUE, cap));
    }

    /**
     * The flushed-buffer threshold for segments (Flink network buffers, so the arena's
     * segments too) of {@code segmentSize} bytes: at most half a segment, and at most
     * {@link #FLUSHED_MAX_BYTES}. The producer sends a buffer when it is full (a whole
     * segment) or flushed (whatever it holds then), so a fixed 8 KiB took every full buffer
     * of 8 KiB (or smaller) segments for a flushed one, and the consumer dispatcher spun
     * shmflow.consumer.spin-ns after each buffer of a busy job. Half a segment keeps a full
     * buffer above the threshold whatever the segment size; a flushed buffer of more than
     * half a segment counts as full, which only picks the shorter spin.
     */
    static int flushedMaxBytes(int segmentSize) {
        return Math.min(FLUSHED_MAX_BYTES, Math.max(0, segmentSize) / 2);
    }

    /** The current zero-copy cap (see {@link #zeroCopyMax}). */
    int zeroCopyMax() {
        return zeroCopyMax;
    }

    /**
     * Recomputes {@link #zeroCopyMax} (the configured value, or the default for the
     * TaskManagers alive on the arena now). Runs at construction and then on {@link #delayed};
     * a failure keeps the last cap.
     */
    private void refreshZeroCopyMax() {
        try {
            if (zeroCopyMaxConfigured > 0) {
                zeroCopyMax = zeroCopyMaxConfigured;
                return;
            }
            long total = totalSegments();
            if (total <= 0) {
                return;
            }
            int live = liveTaskManagers();
            if (live < 0) {
                // The registry could not be listed: keep the last cap (one from a count),
                // or at the first look assume the TaskManagers a host usually runs.
                if (zeroCopyMax == 0) {
                    zeroCopyMax = defaultZeroCopyMax(total, ASSUMED_TASKMANAGERS);
                }
                if (!registryUnreadableLogged) {
                    registryUnreadableLogged = true;
                    LOG.warn("shmflow: cannot list registry directory {}; the zero-copy cap stays {} segments",
                            registryDir, zeroCopyMax);
                }
                return;
            }
            int cap = defaultZeroCopyMax(total, live);
            if (cap != zeroCopyMax) {
                LOG.debug("shmflow: zero-copy cap of TaskManager {}: {} segments", self, cap);
                zeroCopyMax = cap;
            }
        } catch (Throwable e) {
            // A scheduled task that throws is never run again: keep the last cap, say why
            // (once at warn; a failure that repeats every second at debug).
            if (!recountFailureLogged) {
                recountFailureLogged = true;
                LOG.warn("shmflow: recounting the arena's TaskManagers failed", e);
            } else {
                LOG.debug("shmflow: recounting the arena's TaskManagers failed again", e);
            }
        }
    }

    /** TaskManagers assumed on the host when the registry cannot be listed at the first count. */
    private static final int ASSUMED_TASKMANAGERS = 4;

    /** Whether the unreadable registry / a failed recount was logged at warn already. */
    private boolean registryUnreadableLogged;

    private boolean recountFailureLogged;

    /** Most registry entries {@link #liveTaskManagers} looks at (bounds its loop). */
    private static final int MAX_REGISTRY_ENTRIES = 4096;

    /**
     * TaskManagers registered on this arena whose process and arena slot are alive (at
     * least 1: this one), or -1 when the registry directory cannot be listed. Reads the registry directory's entry names ({@code tm-} and the
     * TaskManager id's UTF-8 bytes in hex, written by {@code shmflow_arena_open}) and asks
     * {@code shmflow_peer_lookup} about each, which checks the entry's arena, process and
     * slot. The entry-name format is {@code entry_name} in {@code ffi/src/core.rs}: change
     * both together (the MiniCluster test's count of 4 TaskManagers fails otherwise).
     */
    int liveTaskManagers() {
        String[] names = new java.io.File(registryDir).list();
        if (names == null) {
            return -1;
        }
        int live = 0;
        for (int i = 0; i < names.length && i < MAX_REGISTRY_ENTRIES; i++) {
            String id = registryEntryId(names[i]);
            if (id != null && Native.lookup(arena, id) >= 0) {
                live++;
            }
        }
        return Math.max(1, live);
    }

    /** The TaskManager id of registry entry file {@code name}, or null for another file. */
    static String registryEntryId(String name) {
        if (!name.startsWith("tm-") || name.length() == 3 || (name.length() & 1) == 0) {
            return null;
        }
        byte[] b = new byte[(name.length() - 3) / 2];
        for (int i = 0; i < b.length; i++) {
            int hi = Character.digit(name.charAt(3 + 2 * i), 16);
            int lo = Character.digit(name.charAt(4 + 2 * i), 16);
            if (hi < 0 || lo < 0) {
                return null;
            }
            b[i] = (byte) (hi << 4 | lo);
        }
        return new String(b, java.nio.charset.StandardCharsets.UTF_8);
    }

    /** The live transports of this JVM on arena {@code name} (tests). */
    static List<ShmTransport> allLive(String name) {
        List<ShmTransport> out = new ArrayList<>();
        for (ShmTransport t : LIVE) {
            if (t.arenaName.equals(name)) {
                out.add(t);
            }
        }
        return out;
    }

    /** A live transport of this JVM on arena {@code name}, or null (tests). */
    static ShmTransport anyLive(String name) {
        for (ShmTransport t : LIVE) {
            if (t.arenaName.equals(name)) {
                return t;
            }
        }
        return null;
    }

    private static Thread daemon(Runnable r, String name) {
        Thread t = new Thread(r, name);
        t.setDaemon(true);
        return t;
    }

    /** Free segments of the arena now (a gauge, and what tests check after a cancel). */
    long freeSegments() {
        long[] info = new long[5];
        return Native.info(arena, info) < 0 ? -1 : info[3];
    }

    /** Total segments of the arena. */
    long totalSegments() {
        long[] info = new long[5];
        return Native.info(arena, info) < 0 ? -1 : info[2];
    }

    /**
     * Reclaims what dead TaskManagers left in the arena (exactly once per dead process,
     * whichever TaskManager calls it first); called when a peer is seen dead.
     */
    void reclaimDead() {
        long[] r = new long[4];
        int rc = Native.reclaim(arena, r);
        if (rc < 0) {
            LOG.warn("shmflow: reclaiming dead TaskManagers failed: {}", Native.lastError());
        } else if (r[0] > 0) {
            LOG.info("shmflow: reclaimed {} dead TaskManager process(es): {} segments freed, {} left to their live readers, {} channels failed",
                    r[0], r[1], r[2], r[3]);
        }
    }

    /**
     * Reserves one of the {@link #zeroCopyMax} segments this TaskManager may hold as
     * zero-copy buffers; false when they are all held (the buffer is copied then). Each
     * true is matched by one {@link #returnZeroCopySlot}. A failed reservation counts for a
     * moment too, so the successful ones never exceed the maximum.
     */
    boolean takeZeroCopySlot() {
        if (zeroCopyHeld.getAndIncrement() < zeroCopyMax) {
            return true;
        }
        zeroCopyHeld.decrementAndGet();
        return false;
    }

    /** Gives back a slot of {@link #takeZeroCopySlot} (the buffer's recycler). */
    void returnZeroCopySlot() {
        zeroCopyHeld.decrementAndGet();
    }

    /** Segments held as zero-copy buffers now (tests). */
    int zeroCopyHeld() {
        return zeroCopyHeld.get();
    }

    /**
     * Copies the readable bytes of {@code b} ({@code size} of them) into arena segment
     * {@code seg}: straight from the memory segment under the buffer, or through a
     * ByteBuffer view for a buffer without one (a file region). (Buffer's memory-segment
     * accessors are deprecated in 2.x but present through 2.3.)
     */
    @SuppressWarnings("deprecation")
    void copyIntoSegment(Buffer b, int seg, int size) {
        int at = seg * segmentSize;
        MemorySegment src;
        try {
            src = b.getMemorySegment();
        } catch (UnsupportedOperationException e) {
            src = null;
        }
        if (src != null) {
            src.copyTo(b.getMemorySegmentOffset() + b.getReaderIndex(), dataSegment, at, size);
        } else {
            ByteBuffer dst = data.duplicate();
            dst.position(at);
            dst.put(b.getNioBufferReadable());
        }
    }

    /** Copies {@code size} bytes of arena segment {@code seg} into {@code b} from its start. */
    @SuppressWarnings("deprecation")
    void copyOutOfSegment(int seg, int size, Buffer b) {
        dataSegment.copyTo(seg * segmentSize, b.getMemorySegment(), b.getMemorySegmentOffset(), size);
    }

    /** Arena segment {@code seg} as a Flink memory segment (see {@link #segmentViews}). */
    MemorySegment segmentView(int seg) {
        return segmentViews[seg];
    }

    /** Copies {@code len} bytes of segment {@code seg} into a fresh array. */
    byte[] readSegment(int seg, int len) {
        byte[] b = new byte[len];
        ByteBuffer src = data.duplicate();
        src.position(seg * segmentSize);
        src.get(b, 0, len);
        return b;
    }

    /** Acquires a segment on {@code channel} and fills it with {@code bytes}. */
    int writeSegment(long channel, byte[] bytes) throws IOException {
        if (bytes.length > segmentSize) {
            throw new IOException("shmflow: a message of " + bytes.length + " bytes exceeds a segment (" + segmentSize + ")");
        }
        int seg = Native.acquire(channel, timeoutMs);
        if (seg < 0) {
            throw Native.error("acquiring a segment", seg);
        }
        ByteBuffer dst = data.duplicate();
        dst.position(seg * segmentSize);
        dst.put(bytes);
        return seg;
    }

    // ------------------------------------------------------------------ consumer side

    private void consumerLoop() {
        int[] ids = new int[1024];
        long nextLiveness = System.nanoTime() + LIVENESS_NANOS;
        long spinSet = -1;
        while (running) {
            long spin = lastBufferSmall ? consumerSpinNs : spinNs;
            if (spin != spinSet && Native.setSpin(arena, Native.CONSUMER, spin) >= 0) {
                spinSet = spin;
            }
            int n = Native.await(arena, Native.CONSUMER, ids, 100);
            if (n < 0) {
                LOG.error("shmflow: consumer wait failed: {}", Native.lastError());
                sleepQuietly(10);
                continue;
            }
            for (int i = 0; i < n; i++) {
                ClientChannel c = clientById.get(ids[i]);
                if (c != null) {
                    c.drain();
                }
            }
            // Bounded: what was handed off before this round (a channel handed off again
            // meanwhile waits for the next round, which its wake-up starts at once).
            for (int i = pollsHandedOff.size(); i > 0; i--) {
                ClientChannel c = pollsHandedOff.poll();
                if (c == null) {
                    break;
                }
                c.drain();
            }
            long now = System.nanoTime();
            if (now >= nextLiveness) {
                nextLiveness = now + LIVENESS_NANOS;
                for (ClientChannel c : clientById.values()) {
                    c.checkPeer();
                    c.pollIfTaskPolls();
                }
            }
        }
    }

    /**
     * From a recycler: {@code c} has a poll wanted that its recycler could not do; the
     * consumer dispatcher drains it (woken as a producer's mark would wake it).
     */
    void handOffPoll(ClientChannel c) {
        pollsHandedOff.add(c);
        Native.wake(arena, Native.CONSUMER);
    }

    // ------------------------------------------------------------------ producer side

    /** Whether the calling thread is the consumer dispatcher. */
    boolean onConsumerThread() {
        return Thread.currentThread() == consumerThread;
    }

    /** From any thread: a reader's view has data (or an event). */
    void notifyReaderNonEmpty(ShmViewReader r) {
        notified.add(r);
        wakeProducer();
    }

    /** From any thread: run {@code task} on the producer dispatcher. */
    void runOnProducer(Runnable task) {
        producerTasks.add(task);
        wakeProducer();
    }

    private void wakeProducer() {
        if (producerParked) {
            Native.wake(arena, Native.PRODUCER);
        }
    }

    private void producerLoop() {
        int[] ids = new int[1024];
        int[] msgs = new int[64 * Native.MSG_INTS];
        long nextLiveness = System.nanoTime() + LIVENESS_NANOS;
        while (running) {
            try {
                boolean idle = producerTasks.isEmpty() && notified.isEmpty() && availableReaders.isEmpty();
                int n;
                if (idle) {
                    producerParked = true;
                    // Re-check after announcing: a notifier that missed the flag left its work here.
                    if (producerTasks.isEmpty() && notified.isEmpty()) {
                        n = Native.await(arena, Native.PRODUCER, ids, 100);
                    } else {
                        n = 0;
                    }
                    producerParked = false;
                } else {
                    n = Native.await(arena, Native.PRODUCER, ids, 0);
                }
                if (n < 0) {
                    LOG.error("shmflow: producer wait failed: {}", Native.lastError());
                    sleepQuietly(10);
                    continue;
                }
                for (int i = 0; i < n; i++) {
                    incoming(ids[i], msgs);
                }
                Runnable t;
                while ((t = producerTasks.poll()) != null) {
                    t.run();
                }
                ShmViewReader r;
                while ((r = notified.poll()) != null) {
                    enqueueAvailableReader(r);
                }
                // A round of at most one buffer per available reader (Netty's fairness).
                for (int k = availableReaders.size(); k > 0 && !availableReaders.isEmpty(); k--) {
                    writeNext(availableReaders.poll());
                }
                long now = System.nanoTime();
                if (now >= nextLiveness) {
                    nextLiveness = now + LIVENESS_NANOS;
                    for (ShmViewReader x : new ArrayList<>(readers.values())) {
                        int s = Native.status(x.channel);
                        if (s != 0) {
                            // The consumer closed its end or its process died.
                            if (s == 2) {
                                reclaimDead();
                            }
                            releaseReader(x);
                        }
                    }
                }
            } catch (Throwable e) {
                LOG.error("shmflow: producer dispatcher error", e);
                sleepQuietly(10);
            }
        }
    }

    private void incoming(int id, int[] msgs) {
        ShmViewReader r = readers.get(id);
        if (r == null) {
            long[] out = new long[1];
            int rc = Native.accept(arena, id, out);
            if (rc < 0) {
                // A stale mark of a channel that was closed (and maybe reused) meanwhile.
                LOG.debug("shmflow: not accepting channel {}: {}", id, Native.lastError());
                return;
            }
            r = new ShmViewReader(this, out[0], id);
            readers.put(id, r);
        }
        r.lock.lock();
        try {
            int k;
            do {
                k = Native.poll(r.channel, msgs);
                if (k < 0) {
                    if (k != Native.EPEER) {
                        LOG.warn("shmflow: channel {} failed: {}", id, Native.lastError());
                    }
                    releaseReader(r);
                    return;
                }
                for (int i = 0; i < k && !r.isClosed(); i++) {
                    r.onMessage(msgs, i * Native.MSG_INTS);
                }
            } while (k > 0 && !r.isClosed());
            if (!r.isClosed()) {
                // A mark without a message is the consumer's bank answering our take that
                // found nothing: the reader takes the credit when it looks at its availability.
                enqueueLocked(r);
            }
        } finally {
            r.lock.unlock();
        }
    }

    /** Netty's PartitionRequestQueue.enqueueAvailableReader (dispatcher thread). */
    void enqueueAvailableReader(ShmViewReader reader) {
        reader.lock.lock();
        try {
            enqueueLocked(reader);
        } finally {
            reader.lock.unlock();
        }
    }

    private void enqueueLocked(ShmViewReader reader) {
        reader.clearNotified();
        if (reader.isClosed() || reader.isRegisteredAsAvailable()) {
            return;
        }
        if (!reader.hasView()) {
            return;
        }
        if (reader.hasStash()) {
            // A buffer a direct publication left: its credit is already spent.
            availableReaders.add(reader);
            reader.setRegisteredAsAvailable(true);
            return;
        }
        org.apache.flink.runtime.io.network.partition.ResultSubpartitionView.AvailabilityWithBacklog a =
                reader.getAvailabilityAndBacklog();
        if (!a.isAvailable()) {
            int backlog = a.getBacklog();
            if (backlog > 0 && reader.needAnnounceBacklog()) {
                reader.announceBacklog(backlog);
            }
            return;
        }
        availableReaders.add(reader);
        reader.setRegisteredAsAvailable(true);
    }

    private void writeNext(ShmViewReader reader) {
        reader.lock.lock();
        try {
            writeNextLocked(reader);
        } finally {
            reader.lock.unlock();
        }
    }

    private void writeNextLocked(ShmViewReader reader) {
        reader.setRegisteredAsAvailable(false);
        if (reader.isClosed()) {
            return;
        }
        try {
            switch (reader.writeNextBuffer()) {
                case MORE:
                    availableReaders.add(reader);
                    reader.setRegisteredAsAvailable(true);
                    break;
                case RELEASED:
                    releaseReader(reader);
                    break;
                default:
                    break;
            }
        } catch (Throwable e) {
            LOG.warn("shmflow: serving channel {} failed", reader.channelId, e);
            reader.sendError(e, false);
            releaseReader(reader);
        }
    }

    /** Releases a reader's view and closes its channel end (dispatcher thread). */
    void releaseReader(ShmViewReader r) {
        // This reader only: a release queued by a failed direct publication may run after
        // the channel id went to a new reader.
        readers.remove(r.channelId, r);
        availableReaders.remove(r);
        if (Diag.ON) {
            Diag.dump(LOG, "output channel " + r.channelId + " released");
        }
        r.lock.lock();
        try {
            r.close();
        } finally {
            r.lock.unlock();
        }
    }

    // ------------------------------------------------------------------ lifecycle

    static void sleepQuietly(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    @Override
    public void close() {
        if (!running) {
            return;
        }
        running = false;
        LIVE.remove(this);
        Native.wake(arena, Native.CONSUMER);
        Native.wake(arena, Native.PRODUCER);
        try {
            consumerThread.join(5000);
            producerThread.join(5000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        delayed.shutdownNow();
        for (ClientChannel c : new ArrayList<>(clientById.values())) {
            c.close(false);
        }
        List<ShmViewReader> rs = new ArrayList<>(readers.values());
        for (ShmViewReader r : rs) {
            releaseReader(r);
        }
        int rc = Native.close(arena);
        if (rc < 0) {
            LOG.warn("shmflow: leaving the arena failed: {}", Native.lastError());
        }
    }
}
