/*
 * End-to-end tests of the transport in a Flink MiniCluster of 2 TaskManagers (one JVM).
 * Run by flink/build.sh --test (so by tools/test); exits non-zero on the first failure.
 */
package org.shmflow.flink;

import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.JobStatus;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.MemorySize;
import org.apache.flink.configuration.TaskManagerOptions;
import org.apache.flink.runtime.minicluster.MiniCluster;
import org.apache.flink.runtime.minicluster.MiniClusterConfiguration;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

/** The Flink-side tests of issue 11 (see docs/flink.md, "Tests"). */
public final class MiniClusterTest {
    static final int KEYS = 13;
    /** Largest running sum seen per key (sums only grow, so replays after a restore do not matter). */
    static final ConcurrentHashMap<Long, Long> MAX = new ConcurrentHashMap<>();
    static final AtomicBoolean CHECKPOINT_DONE = new AtomicBoolean();
    static final AtomicBoolean THROWN = new AtomicBoolean();
    static final AtomicInteger RESTARTED_ATTEMPTS = new AtomicInteger();

    private static int failures;
    private static final String RUN = System.getProperty("shmflow.it.run", "shmflow-it-" + ProcessHandle.current().pid());

    private MiniClusterTest() {}

    public static void main(String[] args) throws Exception {
        String only = args.length > 0 ? args[0] : "";
        run(only, "keyby_unaligned_exact_through_shared_memory", MiniClusterTest::keyByUnaligned);
        run(only, "an_unthrottled_keyby_runs_out_of_credit_and_stays_exact", MiniClusterTest::unthrottled);
        run(only, "credit_beyond_the_data_ring_stays_exact", MiniClusterTest::creditBeyondRing);
        run(only, "a_failing_task_restarts_from_its_checkpoint_exactly", MiniClusterTest::failureRestart);
        run(only, "a_cancelled_job_leaves_no_segment_held", MiniClusterTest::cancelFreesSegments);
        run(only, "the_default_zero_copy_cap_is_shared_by_the_hosts_taskmanagers", MiniClusterTest::zeroCopyCapShared);
        run(only, "with_8kb_segments_full_buffers_are_not_taken_for_flushed_ones", MiniClusterTest::smallSegments);
        run(only, "arena_too_small_falls_back_to_netty", MiniClusterTest::tooSmall);
        run(only, "unwritable_registry_dir_falls_back_to_netty", MiniClusterTest::badRegistry);
        System.out.println(failures == 0 ? "flink tests: all passed" : "flink tests: " + failures + " failed");
        System.exit(failures == 0 ? 0 : 1);
    }

    interface Case {
        void run() throws Exception;
    }

    private static void run(String only, String name, Case c) {
        if (!only.isEmpty() && !name.contains(only)) {
            return;
        }
        long t0 = System.nanoTime();
        try {
            c.run();
            System.out.printf("test %s ... ok (%.1f s)%n", name, (System.nanoTime() - t0) / 1e9);
        } catch (Throwable e) {
            failures++;
            System.out.printf("test %s ... FAILED%n", name);
            e.printStackTrace(System.out);
        } finally {
            cleanupRun();
        }
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    private static String arenaName(String tag) {
        return RUN + "-" + tag;
    }

    private static String registryDir(String tag) {
        return System.getenv().getOrDefault("TMPDIR", "/tmp") + File.separator + arenaName(tag) + ".registry";
    }

    /**
     * Removes every arena and registry directory of this run (tests name them by a tag of
     * their own, so the runner removes all of {@link #RUN}'s, whatever the test was called).
     */
    private static void cleanupRun() {
        String prefix = RUN + "-";
        String[] shm = new File("/dev/shm").list();
        String[] tmp = new File(System.getenv().getOrDefault("TMPDIR", "/tmp")).list();
        java.util.Set<String> tags = new java.util.TreeSet<>();
        for (String[] names : new String[][] {shm, tmp}) {
            for (String n : names == null ? new String[0] : names) {
                if (n.startsWith(prefix)) {
                    String tag = n.substring(prefix.length());
                    tags.add(tag.endsWith(".registry") ? tag.substring(0, tag.length() - ".registry".length()) : tag);
                }
            }
        }
        for (String tag : tags) {
            cleanup(tag);
        }
    }

    private static void cleanup(String tag) {
        try {
            Files.deleteIfExists(Path.of("/dev/shm", arenaName(tag)));
            File d = new File(registryDir(tag));
            File[] fs = d.listFiles();
            if (fs != null) {
                for (File f : fs) {
                    Files.deleteIfExists(f.toPath());
                }
            }
            Files.deleteIfExists(d.toPath());
        } catch (Exception e) {
            System.out.println("cleanup of " + tag + ": " + e);
        }
    }

    static Configuration conf(String tag) {
        Configuration c = new Configuration();
        c.set(TaskManagerOptions.MINI_CLUSTER_NUM_TASK_MANAGERS, 2);
        c.set(TaskManagerOptions.NUM_TASK_SLOTS, 1);
        c.set(str("shuffle-service-factory.class"), ShmflowShuffleServiceFactory.class.getName());
        c.set(ShmflowOptions.ARENA_NAME, arenaName(tag));
        c.set(ShmflowOptions.REGISTRY_DIR, registryDir(tag));
        c.set(ShmflowOptions.ARENA_SIZE, MemorySize.parse("16m"));
        c.set(CheckpointingOptions.CHECKPOINTING_INTERVAL, Duration.ofMillis(100));
        c.set(CheckpointingOptions.ENABLE_UNALIGNED, true);
        c.set(str("restart-strategy.type"), "fixed-delay");
        c.set(str("restart-strategy.fixed-delay.attempts"), "3");
        c.set(str("restart-strategy.fixed-delay.delay"), "100 ms");
        return c;
    }

    private static ConfigOption<String> str(String key) {
        return ConfigOptions.key(key).stringType().noDefaultValue();
    }

    /** Sum of x in 1..n with x % KEYS == k, for every k. */
    static Map<Long, Long> expected(long n) {
        Map<Long, Long> m = new TreeMap<>();
        for (long x = 1; x <= n; x++) {
            m.merge(x % KEYS, x, Long::sum);
        }
        return m;
    }

    /** Source 1..n -> (x % KEYS, x) -> keyBy -> running sum -> max per key. */
    static void job(StreamExecutionEnvironment env, long n, boolean failOnce) {
        DataStream<Tuple2<Long, Long>> pairs = env.fromSequence(1, n)
                .map(new Throttle(failOnce))
                .returns(org.apache.flink.api.common.typeinfo.Types.TUPLE(
                        org.apache.flink.api.common.typeinfo.Types.LONG, org.apache.flink.api.common.typeinfo.Types.LONG));
        pairs.keyBy(p -> p.f0)
                .reduce((a, b) -> Tuple2.of(a.f0, a.f1 + b.f1))
                .map(new RecordMax())
                .sinkTo(new DiscardingSink<>());
    }

    /** Slows the source a little (so checkpoints complete mid-job) and may fail once. */
    static final class Throttle extends RichMapFunction<Long, Tuple2<Long, Long>> implements CheckpointListener {
        private static final long serialVersionUID = 1L;
        private final boolean failOnce;
        private long seen;

        Throttle(boolean failOnce) {
            this.failOnce = failOnce;
        }

        @Override
        public Tuple2<Long, Long> map(Long x) throws Exception {
            if (getRuntimeContext().getTaskInfo().getAttemptNumber() > 0) {
                RESTARTED_ATTEMPTS.incrementAndGet();
            }
            if (++seen % 2000 == 0) {
                Thread.sleep(1);
            }
            if (failOnce && CHECKPOINT_DONE.get() && seen > 5000 && THROWN.compareAndSet(false, true)) {
                throw new RuntimeException("planned failure of the test (after a completed checkpoint)");
            }
            return Tuple2.of(x % KEYS, x);
        }

        @Override
        public void notifyCheckpointComplete(long checkpointId) {
            CHECKPOINT_DONE.set(true);
        }
    }

    static final class RecordMax extends RichMapFunction<Tuple2<Long, Long>, Long> {
        private static final long serialVersionUID = 1L;

        @Override
        public Long map(Tuple2<Long, Long> p) {
            MAX.merge(p.f0, p.f1, Math::max);
            return p.f1;
        }
    }

    static StreamExecutionEnvironment env(Configuration c) {
        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(2, c);
        return env;
    }

    static void reset() {
        MAX.clear();
        CHECKPOINT_DONE.set(false);
        THROWN.set(false);
        RESTARTED_ATTEMPTS.set(0);
    }

    static long shmBuffersIn() {
        return ShmMetrics.TOTAL_BUFFERS_IN.get();
    }

    // ------------------------------------------------------------------ cases

    static void keyByUnaligned() throws Exception {
        reset();
        long n = 400_000;
        long before = shmBuffersIn();
        long channelsBefore = ShmMetrics.TOTAL_SHM_CHANNELS.get();
        long zeroCopyBefore = ShmMetrics.TOTAL_ZERO_COPY_IN.get();
        long directBefore = ShmMetrics.TOTAL_DIRECT_OUT.get();
        long onCreditBefore = ShmMetrics.TOTAL_ON_CREDIT_IN.get();
        long onRecycleBefore = ShmMetrics.TOTAL_ON_RECYCLE_IN.get();
        long takesBefore = ShmMetrics.TOTAL_CREDIT_TAKES.get();
        // The defaults: the zero-copy consumer path (the restart case runs the one-copy path).
        Configuration c = conf("keyby");
        StreamExecutionEnvironment env = env(c);
        job(env, n, false);
        env.execute("shmflow keyBy unaligned");
        check(new TreeMap<>(MAX).equals(expected(n)), "exact sums per key, got " + new TreeMap<>(MAX));
        long in = shmBuffersIn() - before;
        check(ShmConnectionManager.lastFallback == null, "no fallback, got " + ShmConnectionManager.lastFallback);
        check(ShmMetrics.TOTAL_SHM_CHANNELS.get() - channelsBefore > 0, "channels through shared memory");
        check(in > 0, "buffers through shared memory: " + in);
        long zc = ShmMetrics.TOTAL_ZERO_COPY_IN.get() - zeroCopyBefore;
        check(zc > 0, "buffers delivered as arena slices (shmflow.consumer.zero-copy: true, the default): " + zc);
        long direct = ShmMetrics.TOTAL_DIRECT_OUT.get() - directBefore;
        check(direct > 0, "buffers published by the producing thread (shmflow.producer.direct: true): " + direct);
        long takes = ShmMetrics.TOTAL_CREDIT_TAKES.get() - takesBefore;
        check(takes > 0, "credit taken from the bank (shmflow.consumer.banked-credit: true): " + takes);
        System.out.printf("  %d buffers (%d zero copy, %d published directly, %d delivered on credit, %d by a recycler polling), %d bytes out through shared memory%n",
                in, zc, direct, ShmMetrics.TOTAL_ON_CREDIT_IN.get() - onCreditBefore,
                ShmMetrics.TOTAL_ON_RECYCLE_IN.get() - onRecycleBefore, ShmMetrics.TOTAL_BYTES_OUT.get());
        // The per-job MiniCluster shuts its TaskManagers down after execute() returns.
        for (int i = 0; i < 200 && Files.exists(Path.of("/dev/shm", arenaName("keyby"))); i++) {
            Thread.sleep(50);
        }
        check(!Files.exists(Path.of("/dev/shm", arenaName("keyby"))), "the last TaskManager out unlinks the arena");
    }

    /**
     * A source as fast as it goes into a keyed reduce: the channels run out of credit again
     * and again, with full buffers the task leaves to the dispatcher (direct-max-bytes) and
     * flushed ones it publishes itself. Zero copy may hold one segment at a time per
     * TaskManager here, so buffers arriving while one is held are copied instead.
     */
    static void unthrottled() throws Exception {
        reset();
        long n = 3_000_000;
        long before = shmBuffersIn();
        long takesBefore = ShmMetrics.TOTAL_CREDIT_TAKES.get();
        long zeroCopyBefore = ShmMetrics.TOTAL_ZERO_COPY_IN.get();
        long cappedBefore = ShmMetrics.TOTAL_ZERO_COPY_CAPPED.get();
        long onRecycleBefore = ShmMetrics.TOTAL_ON_RECYCLE_IN.get();
        long onCreditBefore = ShmMetrics.TOTAL_ON_CREDIT_IN.get();
        Configuration c = conf("fast");
        c.set(ShmflowOptions.ZERO_COPY_MAX_SEGMENTS, 1);
        // Full buffers to the dispatcher (stashed by the direct path), flushed ones direct.
        c.set(ShmflowOptions.DIRECT_MAX_BYTES, org.apache.flink.configuration.MemorySize.parse("8kb"));
        // Any failure (a credit-rule violation fails the producer) fails the job.
        c.set(str("restart-strategy.type"), "none");
        StreamExecutionEnvironment env = env(c);
        env.fromSequence(1, n)
                .map(x -> Tuple2.of(x % KEYS, x))
                .returns(org.apache.flink.api.common.typeinfo.Types.TUPLE(
                        org.apache.flink.api.common.typeinfo.Types.LONG, org.apache.flink.api.common.typeinfo.Types.LONG))
                .keyBy(p -> p.f0)
                .reduce((a, b) -> Tuple2.of(a.f0, a.f1 + b.f1))
                .map(new RecordMax())
                .sinkTo(new DiscardingSink<>());
        env.execute("shmflow unthrottled keyBy");
        check(new TreeMap<>(MAX).equals(expected(n)), "exact sums per key, got " + new TreeMap<>(MAX));
        check(shmBuffersIn() - before > 100, "buffers through shared memory: " + (shmBuffersIn() - before));
        // Banked credit (the default) is what refilled the credit each time it ran out.
        check(ShmMetrics.TOTAL_CREDIT_TAKES.get() > takesBefore, "credit taken from the bank");
        long zc = ShmMetrics.TOTAL_ZERO_COPY_IN.get() - zeroCopyBefore;
        long capped = ShmMetrics.TOTAL_ZERO_COPY_CAPPED.get() - cappedBefore;
        check(zc > 0, "buffers delivered zero copy under the limit: " + zc);
        check(capped > 0, "buffers copied at the limit of one held segment: " + capped);
        // Task polls (the default): a buffer that arrives while the task holds a zero-copy
        // buffer of its channel marks nobody, and that buffer's recycler delivers it.
        long onRecycle = ShmMetrics.TOTAL_ON_RECYCLE_IN.get() - onRecycleBefore;
        check(onRecycle > 0, "buffers delivered by a zero-copy buffer's recycler (shmflow.consumer.task-polls: true): " + onRecycle);
        System.out.printf("  %d buffers zero copy, %d copied at the limit, %d delivered by a recycler polling, %d on credit%n",
                zc, capped, ShmMetrics.TOTAL_ON_RECYCLE_IN.get() - onRecycleBefore,
                ShmMetrics.TOTAL_ON_CREDIT_IN.get() - onCreditBefore);
    }

    /**
     * More credit per channel (100) than the data ring holds messages (64), every buffer
     * published by the task thread when it can (direct-max-bytes = a segment): a lagging
     * consumer dispatcher lets the ring fill, and a direct publication must then leave its
     * buffer to the producer dispatcher (it does not wait for room) in sequence order.
     * Whether the ring fills in a run depends on the scheduling, so the count is printed,
     * not asserted; the sums must be exact either way.
     */
    static void creditBeyondRing() throws Exception {
        reset();
        long n = 1_000_000;
        long before = shmBuffersIn();
        long ringFullBefore = ShmMetrics.TOTAL_DIRECT_RING_FULL.get();
        long directBefore = ShmMetrics.TOTAL_DIRECT_OUT.get();
        Configuration c = conf("deep");
        c.set(ShmflowOptions.ARENA_SIZE, MemorySize.parse("64m"));
        c.set(str("taskmanager.network.memory.buffers-per-channel"), "100");
        c.set(ShmflowOptions.DIRECT_MAX_BYTES, MemorySize.parse("32kb"));
        c.set(str("restart-strategy.type"), "none");
        StreamExecutionEnvironment env = env(c);
        env.fromSequence(1, n)
                .map(x -> Tuple2.of(x % KEYS, x))
                .returns(org.apache.flink.api.common.typeinfo.Types.TUPLE(
                        org.apache.flink.api.common.typeinfo.Types.LONG, org.apache.flink.api.common.typeinfo.Types.LONG))
                .keyBy(p -> p.f0)
                .reduce((a, b) -> Tuple2.of(a.f0, a.f1 + b.f1))
                .map(new RecordMax())
                .sinkTo(new DiscardingSink<>());
        env.execute("shmflow keyBy with credit beyond the ring");
        check(new TreeMap<>(MAX).equals(expected(n)), "exact sums per key, got " + new TreeMap<>(MAX));
        check(shmBuffersIn() - before > 100, "buffers through shared memory: " + (shmBuffersIn() - before));
        long direct = ShmMetrics.TOTAL_DIRECT_OUT.get() - directBefore;
        check(direct > 0, "buffers published by the task thread: " + direct);
        System.out.printf("  %d buffers, %d published directly, %d left to the dispatcher on a full ring%n",
                shmBuffersIn() - before, direct, ShmMetrics.TOTAL_DIRECT_RING_FULL.get() - ringFullBefore);
    }

    static void failureRestart() throws Exception {
        reset();
        long n = 600_000;
        long before = shmBuffersIn();
        long zeroCopyBefore = ShmMetrics.TOTAL_ZERO_COPY_IN.get();
        long directBefore = ShmMetrics.TOTAL_DIRECT_OUT.get();
        long onCreditBefore = ShmMetrics.TOTAL_ON_CREDIT_IN.get();
        long takesBefore = ShmMetrics.TOTAL_CREDIT_TAKES.get();
        // The one-copy consumer path (the keyBy and cancel cases run zero copy, the default),
        // every buffer through the producer dispatcher (the others publish directly) and
        // every delivery by the consumer dispatcher (the others deliver on credit too).
        Configuration c = conf("restart");
        c.set(ShmflowOptions.ZERO_COPY, false);
        c.set(ShmflowOptions.DIRECT, false);
        c.set(ShmflowOptions.DELIVER_ON_CREDIT, false);
        // And credit as messages through the producer dispatcher (the others bank it).
        c.set(ShmflowOptions.BANKED_CREDIT, false);
        StreamExecutionEnvironment env = env(c);
        job(env, n, true);
        env.execute("shmflow restart");
        check(THROWN.get(), "the planned failure happened");
        check(RESTARTED_ATTEMPTS.get() > 0, "a second attempt ran");
        check(new TreeMap<>(MAX).equals(expected(n)), "exact sums per key after the restart, got " + new TreeMap<>(MAX));
        check(shmBuffersIn() - before > 0, "buffers through shared memory");
        check(ShmMetrics.TOTAL_ZERO_COPY_IN.get() == zeroCopyBefore, "shmflow.consumer.zero-copy: false copies every buffer");
        check(ShmMetrics.TOTAL_DIRECT_OUT.get() == directBefore, "shmflow.producer.direct: false publishes every buffer from the dispatcher");
        check(ShmMetrics.TOTAL_ON_CREDIT_IN.get() == onCreditBefore, "shmflow.consumer.deliver-on-credit: false delivers every buffer from the dispatcher");
        check(ShmMetrics.TOTAL_CREDIT_TAKES.get() == takesBefore, "shmflow.consumer.banked-credit: false sends credit as messages");
    }

    static void cancelFreesSegments() throws Exception {
        reset();
        Configuration c = conf("cancel");
        // Zero copy (the default): buffers Flink still holds keep their arena segments until recycled.
        // A cluster that outlives the job, so its TaskManagers are still attached after the cancel.
        MiniCluster mc = new MiniCluster(new MiniClusterConfiguration.Builder()
                .setConfiguration(c)
                .setNumTaskManagers(2)
                .setNumSlotsPerTaskManager(1)
                .build());
        mc.start();
        try {
            StreamExecutionEnvironment env = env(c);
            job(env, Long.MAX_VALUE / 4, false);
            long before = shmBuffersIn();
            long zeroCopyBefore = ShmMetrics.TOTAL_ZERO_COPY_IN.get();
            JobID id = mc.submitJob(env.getStreamGraph().getJobGraph()).get().getJobID();
            // Bounded wait for traffic through shared memory (60 s at most).
            for (int i = 0; i < 600 && shmBuffersIn() - before < 50; i++) {
                Thread.sleep(100);
            }
            check(shmBuffersIn() - before >= 50, "traffic through shared memory before the cancel");
            check(ShmMetrics.TOTAL_ZERO_COPY_IN.get() > zeroCopyBefore, "buffers delivered zero copy before the cancel");
            mc.cancelJob(id).get();
            for (int i = 0; i < 600 && mc.getJobStatus(id).get() != JobStatus.CANCELED; i++) {
                Thread.sleep(100);
            }
            check(mc.getJobStatus(id).get() == JobStatus.CANCELED, "the job is cancelled");
            // Both TaskManagers are still attached: every segment must be back on the free stack.
            long free = -1;
            long total = -2;
            for (int i = 0; i < 200; i++) {
                ShmTransport t = ShmTransport.anyLive(arenaName("cancel"));
                check(t != null, "a live transport on the test's arena");
                free = t.freeSegments();
                total = t.totalSegments();
                if (free == total) {
                    break;
                }
                Thread.sleep(50);
            }
            check(free == total, "no segment held after the cancel: " + free + " of " + total + " free");
            for (int i = 0; i < 200 && ShmTransport.anyLive(arenaName("cancel")).zeroCopyHeld() != 0; i++) {
                Thread.sleep(50);
            }
            int held = ShmTransport.anyLive(arenaName("cancel")).zeroCopyHeld();
            check(held == 0, "no zero-copy slot held after the cancel: " + held);
            System.out.printf("  %d of %d segments free after the cancel%n", free, total);
        } finally {
            mc.closeAsync().get(60, java.util.concurrent.TimeUnit.SECONDS);
        }
        check(ShmTransport.anyLive(arenaName("cancel")) == null, "the TaskManagers left the arena");
        check(!Files.exists(Path.of("/dev/shm", arenaName("cancel"))), "the last TaskManager out unlinks the arena");
    }

    /**
     * Every TaskManager of a host consumes from the one arena, so the default zero-copy cap
     * divides the arena's quarter among those attached: 4 TaskManagers together may hold at
     * most a quarter of the segments (before, each could hold a quarter: all of them), and a
     * tiny arena still gets a cap of 1 (before, 0: zero copy silently off).
     */
    static void zeroCopyCapShared() throws Exception {
        check(ShmTransport.defaultZeroCopyMax(512, 1) == 128, "one TaskManager: a quarter");
        check(ShmTransport.defaultZeroCopyMax(512, 4) == 32, "four TaskManagers: a sixteenth each");
        check(ShmTransport.defaultZeroCopyMax(3, 1) == 1, "fewer than 4 segments: still 1");
        check(ShmTransport.defaultZeroCopyMax(8, 0) == 2, "no TaskManager counted: as if one");
        check("tm-1".equals(ShmTransport.registryEntryId("tm-746d2d31")), "a registry entry name decodes to its id");
        check(ShmTransport.registryEntryId(".lock") == null && ShmTransport.registryEntryId("tm-7") == null
                && ShmTransport.registryEntryId("tm-zz") == null, "other files are no entries");
        int tms = 4;
        Configuration c = conf("cap");
        MiniCluster mc = new MiniCluster(new MiniClusterConfiguration.Builder()
                .setConfiguration(c)
                .setNumTaskManagers(tms)
                .setNumSlotsPerTaskManager(1)
                .build());
        mc.start();
        try {
            java.util.List<ShmTransport> ts = ShmTransport.allLive(arenaName("cap"));
            // Bounded wait (20 s at most) for the 4 to attach and each to recount (every second).
            for (int i = 0; i < 200 && !capsAre(ts, tms); i++) {
                Thread.sleep(100);
                ts = ShmTransport.allLive(arenaName("cap"));
            }
            check(ts.size() == tms, "all TaskManagers attached: " + ts.size());
            long total = ts.get(0).totalSegments();
            check(ts.get(0).liveTaskManagers() == tms, "TaskManagers alive on the arena: " + ts.get(0).liveTaskManagers());
            long sum = 0;
            for (ShmTransport t : ts) {
                check(t.zeroCopyMax() == ShmTransport.defaultZeroCopyMax(total, tms),
                        "cap " + t.zeroCopyMax() + " of " + total + " segments shared by " + tms);
                sum += t.zeroCopyMax();
            }
            check(sum <= total / 4, "together at most a quarter of the arena: " + sum + " of " + total);
            System.out.printf("  %d TaskManagers, cap %d each, %d segments%n", tms, ts.get(0).zeroCopyMax(), total);
        } finally {
            mc.closeAsync().get(60, java.util.concurrent.TimeUnit.SECONDS);
        }
    }

    private static boolean capsAre(java.util.List<ShmTransport> ts, int tms) {
        if (ts.size() != tms) {
            return false;
        }
        for (ShmTransport t : ts) {
            if (t.zeroCopyMax() != ShmTransport.defaultZeroCopyMax(t.totalSegments(), tms)) {
                return false;
            }
        }
        return true;
    }

    /**
     * The consumer's flushed-buffer threshold (its long spin) follows the segment size: with
     * 8 KiB segments a fixed 8 KiB took every full buffer for a flushed one. The keyBy job
     * then runs exact on 8 KiB segments, whose transports use half a segment.
     */
    static void smallSegments() throws Exception {
        check(ShmTransport.flushedMaxBytes(32 * 1024) == 8 * 1024, "32 KiB segments (the default): 8 KiB");
        check(ShmTransport.flushedMaxBytes(64 * 1024) == 8 * 1024, "larger segments: still 8 KiB");
        for (int seg : new int[] {4096, 8192, 16384, 32768, 65536}) {
            check(ShmTransport.flushedMaxBytes(seg) < seg, "a full buffer of " + seg + " bytes is not a flushed one");
            check(ShmTransport.flushedMaxBytes(seg) > 0, "a flushed buffer of " + seg + "-byte segments can still be");
        }
        check(ShmTransport.flushedMaxBytes(8 * 1024) == 4 * 1024, "8 KiB segments: half a segment");
        reset();
        long n = 200_000;
        long before = shmBuffersIn();
        Configuration c = conf("seg8k");
        c.set(TaskManagerOptions.MEMORY_SEGMENT_SIZE, MemorySize.parse("8kb"));
        StreamExecutionEnvironment env = env(c);
        job(env, n, false);
        org.apache.flink.core.execution.JobClient client = env.executeAsync("shmflow keyBy on 8 KiB segments");
        java.util.List<ShmTransport> ts = ShmTransport.allLive(arenaName("seg8k"));
        // Bounded wait (20 s at most) for the TaskManagers to attach; the job takes longer.
        for (int i = 0; i < 200 && ts.size() < 2; i++) {
            Thread.sleep(100);
            ts = ShmTransport.allLive(arenaName("seg8k"));
        }
        check(ts.size() == 2, "both TaskManagers attached: " + ts.size());
        for (ShmTransport t : ts) {
            check(t.segmentSize == 8 * 1024, "the arena has the TaskManagers' segment size: " + t.segmentSize);
            check(t.flushedMaxBytes == 4 * 1024, "flushed-buffer threshold of 8 KiB segments: " + t.flushedMaxBytes);
        }
        client.getJobExecutionResult().get(120, java.util.concurrent.TimeUnit.SECONDS);
        check(ShmConnectionManager.lastFallback == null, "no fallback, got " + ShmConnectionManager.lastFallback);
        check(new TreeMap<>(MAX).equals(expected(n)), "exact sums per key, got " + new TreeMap<>(MAX));
        check(shmBuffersIn() - before > 0, "buffers through shared memory: " + (shmBuffersIn() - before));
    }

    static void fallback(String tag, Configuration c, String needle) throws Exception {
        reset();
        long n = 100_000;
        long before = shmBuffersIn();
        long nettyBefore = ShmMetrics.TOTAL_NETTY_CLIENTS.get();
        StreamExecutionEnvironment env = env(c);
        job(env, n, false);
        env.execute("shmflow fallback " + tag);
        check(new TreeMap<>(MAX).equals(expected(n)), "exact sums through Netty, got " + new TreeMap<>(MAX));
        String why = ShmConnectionManager.lastFallback;
        check(why != null && why.contains(needle), "fallback reason mentions '" + needle + "': " + why);
        check(shmBuffersIn() == before, "nothing through shared memory");
        check(ShmMetrics.TOTAL_NETTY_CLIENTS.get() > nettyBefore, "Netty clients were used");
    }

    static void tooSmall() throws Exception {
        Configuration c = conf("small");
        c.set(ShmflowOptions.ARENA_SIZE, MemorySize.parse("64k"));
        fallback("small", c, "segments");
    }

    static void badRegistry() throws Exception {
        Configuration c = conf("registry");
        c.set(ShmflowOptions.REGISTRY_DIR, "/proc/shmflow-registry-not-writable");
        fallback("registry", c, "registry directory");
    }
}
