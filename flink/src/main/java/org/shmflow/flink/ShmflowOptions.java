/*
 * Settings of the shared-memory transport, under shmflow.* in Flink's configuration.
 */
package org.shmflow.flink;

import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.MemorySize;

/** The {@code shmflow.*} options (documented in docs/flink.md, "Settings"). */
public final class ShmflowOptions {
    private ShmflowOptions() {}

    /** Whether TaskManagers on one host exchange data through shared memory at all. */
    public static final ConfigOption<Boolean> ENABLED =
            ConfigOptions.key("shmflow.enabled")
                    .booleanType()
                    .defaultValue(true)
                    .withDescription("Exchange data between TaskManagers of one host through shared memory; false: Netty only.");

    /** Size of the host's arena (created by the first TaskManager that starts). */
    public static final ConfigOption<MemorySize> ARENA_SIZE =
            ConfigOptions.key("shmflow.arena.size")
                    .memoryType()
                    .defaultValue(MemorySize.parse("64m"))
                    .withDescription("Size of the shared arena under /dev/shm (segments of taskmanager.memory.segment-size).");

    /** Name of the arena under /dev/shm; default shmflow-flink-USER. */
    public static final ConfigOption<String> ARENA_NAME =
            ConfigOptions.key("shmflow.arena.name")
                    .stringType()
                    .noDefaultValue()
                    .withDescription("Name of the arena file under /dev/shm (default shmflow-flink-<user>).");

    /** Directory where each TaskManager records its id, arena slot and pid. */
    public static final ConfigOption<String> REGISTRY_DIR =
            ConfigOptions.key("shmflow.registry.dir")
                    .stringType()
                    .noDefaultValue()
                    .withDescription("Registry directory of the TaskManagers attached to the arena (default /dev/shm/shmflow-flink-<user>.registry).");

    /**
     * How long the idle producer dispatcher (and the consumer one, with full buffers) spins
     * before it parks on the futex. 5 us since session 9: with 20 us both dispatchers spent
     * about one involuntary context switch per 32 KiB buffer in their spin's yields and used
     * more TaskManager CPU per record (flink/bench cross-TM 1 KiB, 4 interleaved rounds under
     * load, docs/flink.md).
     */
    public static final ConfigOption<Long> SPIN_NS =
            ConfigOptions.key("shmflow.spin-ns")
                    .longType()
                    .defaultValue(5_000L)
                    .withDescription("Spin budget in nanoseconds of the idle producer dispatcher before it blocks (0..1e9), and of the consumer dispatcher while it receives full buffers; it blocks early when its core is contended.");

    /**
     * Spin budget of the consumer dispatcher (the one that hands buffers to Flink's input
     * channels) while the buffers it receives are small (at most 8 KiB: flushed, a job
     * slower than the pipeline): long
     * enough to span the gap between records of a low-rate job, so a record finds it awake
     * instead of waiting for a futex wake-up. With full buffers (a busy job, whose threads
     * need the cores) it spins shmflow.spin-ns. Either parks early when the core is contended
     * (a yield of its spin came back late).
     */
    public static final ConfigOption<Long> CONSUMER_SPIN_NS =
            ConfigOptions.key("shmflow.consumer.spin-ns")
                    .longType()
                    .defaultValue(250_000L)
                    .withDescription("Spin budget in nanoseconds of the consumer dispatcher before it blocks (0..1e9) while the buffers it receives are small (at most 8 KiB: flushed ones); with full buffers it spins shmflow.spin-ns. It blocks early when its core is contended.");

    /**
     * Consumer side: the thread that announces credit (Flink does when a buffer of the input
     * channel comes back, mostly the task thread that read it) also hands the channel what
     * already arrived, when the consumer dispatcher is not doing so at that moment: a task
     * that keeps up takes its next buffers without a wake-up of the dispatcher and of itself.
     */
    public static final ConfigOption<Boolean> DELIVER_ON_CREDIT =
            ConfigOptions.key("shmflow.consumer.deliver-on-credit")
                    .booleanType()
                    .defaultValue(true)
                    .withDescription("Consumer side: the thread announcing credit (the task recycling a buffer) delivers what already arrived on that channel when the consumer dispatcher is not delivering; false: only the dispatcher delivers.");

    /**
     * Consumer side: announce credit by adding it to the channel's bank in shared memory
     * instead of sending a credit message, on channels whose initial credit is positive
     * (Flink's default: exclusive buffers per channel). The producer takes the bank when
     * its credit is used up, so an announcement wakes the producer's dispatcher only when
     * the producer ran out of credit and asked for it, not once per recycled buffer.
     */
    public static final ConfigOption<Boolean> BANKED_CREDIT =
            ConfigOptions.key("shmflow.consumer.banked-credit")
                    .booleanType()
                    .defaultValue(true)
                    .withDescription("Consumer side: announce credit through a counter in shared memory that the producer takes when its credit is used up (its dispatcher is woken only when it ran out and asked), on channels with positive initial credit; false: every announcement is a message that wakes the producer's dispatcher.");

    /**
     * Consumer side: while zero-copy buffers of a channel are out (not yet recycled by
     * Flink), their recyclers poll the channel's ring and hand Flink what arrived, and the
     * producer does not wake this TaskManager's consumer dispatcher for data buffers of that
     * channel (events always wake it). The last such buffer to come back stops the polling
     * (with a fence and one more poll: {@code ffi/src/polled.rs}). Needs zero copy.
     */
    public static final ConfigOption<Boolean> TASK_POLLS =
            ConfigOptions.key("shmflow.consumer.task-polls")
                    .booleanType()
                    .defaultValue(true)
                    .withDescription("Consumer side: while zero-copy buffers of a channel are out, their recyclers (mostly the task thread) poll the channel and deliver what arrived, and the producer does not wake the consumer dispatcher for that channel's data buffers (events always wake it); false: the dispatcher is woken for every buffer.");

    /**
     * Consumer side: hand the arena segment itself to Flink (a slice wrapped as a Flink
     * buffer, holding a buffer of the input channel's own pool as its credit token until
     * Flink recycles it) instead of copying it into that buffer. On by default since
     * session 9: with the library's segment eviction off it was the faster path
     * (docs/flink.md, "How it works"). At most {@link #ZERO_COPY_MAX_SEGMENTS} segments are
     * held that way at once per TaskManager (by default all the host's TaskManagers together
     * at most a quarter of the arena); past that each buffer is copied.
     */
    public static final ConfigOption<Boolean> ZERO_COPY =
            ConfigOptions.key("shmflow.consumer.zero-copy")
                    .booleanType()
                    .defaultValue(true)
                    .withDescription("Consumer side: deliver arena segments to Flink without a copy (each holds one of the channel's buffers as its credit token until recycled; at most shmflow.consumer.zero-copy-max-segments at once, the rest copied); false: copy each into a buffer of the channel's pool.");

    /**
     * How many arena segments one TaskManager's consumer may hold as zero-copy buffers at
     * once (Flink holds them while it reads them, the channel-state writer of an unaligned
     * checkpoint longer). A buffer arriving past that is copied into the channel's pool
     * buffer and its segment released at once. 0 (the default): a quarter of the arena's
     * segments divided by the TaskManagers alive on the arena (every TaskManager of the host
     * consumes from it; counted in the registry every second), at least 1, so together they
     * hold at most a quarter (one segment each when there are more TaskManagers than a
     * quarter of the segments) and producers keep the rest to publish into. A value above 0
     * holds per TaskManager: their sum over the host's TaskManagers should stay well below
     * the arena's segments.
     */
    public static final ConfigOption<Integer> ZERO_COPY_MAX_SEGMENTS =
            ConfigOptions.key("shmflow.consumer.zero-copy-max-segments")
                    .intType()
                    .defaultValue(0)
                    .withDescription("Most arena segments this TaskManager holds as zero-copy buffers at once; past that buffers are copied. 0: a quarter of the arena's segments divided by the TaskManagers alive on the arena (recounted every second), at least 1, so all of the host's together hold at most a quarter; a value above 0 is per TaskManager.");

    /**
     * Producer side: the thread that makes a buffer available (the task thread, or Flink's
     * output flusher) copies it into the arena and publishes it itself when its consumer has
     * credit and the dispatcher is not serving that channel, instead of waking the producer
     * dispatcher to do it (one thread hand-off less per buffer).
     */
    public static final ConfigOption<Boolean> DIRECT =
            ConfigOptions.key("shmflow.producer.direct")
                    .booleanType()
                    .defaultValue(true)
                    .withDescription("Producer side: the thread that makes a buffer available publishes it into the arena itself when the consumer has credit and the dispatcher is not serving the channel; false: always through the producer dispatcher thread.");

    /**
     * Largest buffer the direct path publishes from the task thread. Larger ones (full
     * buffers of a busy job) go to the dispatcher, so the task thread goes on writing records
     * while another thread copies; flushed small buffers (low rates, buffer timeout 0) go
     * direct, where the hand-off would cost latency. Publishing full buffers too (32kb) was
     * ahead in one loaded A/B of session 10 and behind in the next (docs/flink.md): kept at
     * 8 KiB until an idle machine decides.
     */
    public static final ConfigOption<MemorySize> DIRECT_MAX_BYTES =
            ConfigOptions.key("shmflow.producer.direct-max-bytes")
                    .memoryType()
                    .defaultValue(MemorySize.parse("8kb"))
                    .withDescription("Largest buffer the direct path (shmflow.producer.direct) publishes from the thread that made it available; larger ones go through the producer dispatcher.");

    /** Longest wait for a free segment or ring room before the channel fails. */
    public static final ConfigOption<Integer> TIMEOUT_MS =
            ConfigOptions.key("shmflow.timeout-ms")
                    .intType()
                    .defaultValue(30_000)
                    .withDescription("Longest wait for a free segment or room in a ring before the channel fails.");

    /** Path of libshmflow_ffi.so; default: the copy packed in the jar. */
    public static final ConfigOption<String> NATIVE_LIBRARY =
            ConfigOptions.key("shmflow.native-library")
                    .stringType()
                    .noDefaultValue()
                    .withDescription("Path of libshmflow_ffi.so (default: the copy inside the plugin jar).");

    static String user() {
        String u = System.getProperty("user.name", "user");
        return u.replaceAll("[^A-Za-z0-9_.-]", "_");
    }
}
