/*
 * The job of flink/demo: a keyBy job in STREAMING mode with unaligned checkpoints every
 * second, whose results the client checks exactly.
 */
package org.shmflow.flink.demo;

import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.ExecutionOptions;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.CloseableIterator;

import java.time.Duration;
import java.util.Map;
import java.util.TreeMap;

/**
 * Numbers 1..N, keyed by {@code x % 13}, summed per key; the client collects the running sums
 * and keeps the largest per key (sums only grow, so records replayed after a restore do not
 * change it), then compares with the sums it computes itself. Exit status 0 when exact.
 *
 * <p>Arguments: {@code --records N} (default 20000000), {@code --pause-every K} (the source
 * map sleeps 1 ms every K records per subtask, default 20000, so the job runs long enough for
 * checkpoints and for a TaskManager to be killed under it).
 */
public final class KeyByDemo {
    static final int KEYS = 13;

    private KeyByDemo() {}

    public static void main(String[] args) throws Exception {
        long n = 20_000_000L;
        long pauseEvery = 20_000L;
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (args[i].equals("--records")) {
                n = Long.parseLong(args[i + 1]);
            } else if (args[i].equals("--pause-every")) {
                pauseEvery = Long.parseLong(args[i + 1]);
            }
        }
        Configuration c = new Configuration();
        c.set(ExecutionOptions.RUNTIME_MODE, RuntimeExecutionMode.STREAMING);
        c.set(CheckpointingOptions.CHECKPOINTING_INTERVAL, Duration.ofSeconds(1));
        c.set(CheckpointingOptions.ENABLE_UNALIGNED, true);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(c);
        final long pause = pauseEvery;
        long t0 = System.nanoTime();
        Map<Long, Long> max = new TreeMap<>();
        final long records = n;
        CloseableIterator<Tuple3<Long, Long, Long>> it = env.fromSequence(1, n)
                .map(new Pause(pause))
                .returns(Types.TUPLE(Types.LONG, Types.LONG, Types.LONG))
                .keyBy(p -> p.f0)
                .reduce((a, b) -> Tuple3.of(a.f0, a.f1 + b.f1, a.f2 + b.f2))
                // Only every 100000th running sum and the last one of each key go back to
                // the client (the collect sink is not what this job measures).
                .filter(p -> p.f2 % 100_000 == 0 || p.f2 == count(p.f0, records))
                .executeAndCollect("shmflow demo keyBy");
        try {
            while (it.hasNext()) {
                Tuple3<Long, Long, Long> p = it.next();
                max.merge(p.f0, p.f1, Math::max);
            }
        } finally {
            it.close();
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        Map<Long, Long> want = new TreeMap<>();
        for (long k = 0; k < KEYS; k++) {
            // Sum of x in 1..n with x % KEYS == k, in closed form.
            long first = k == 0 ? KEYS : k;
            long count = count(k, n);
            want.put(k, count * first + KEYS * count * (count - 1) / 2);
        }
        boolean exact = want.equals(max);
        System.out.printf("keyBy demo: %d records in %.1f s, %d keys, results %s%n",
                n, secs, max.size(), exact ? "EXACT" : "WRONG (got " + max + ", want " + want + ")");
        System.exit(exact ? 0 : 1);
    }

    /** How many of 1..n are congruent to k modulo KEYS. */
    static long count(long k, long n) {
        long first = k == 0 ? KEYS : k;
        return first > n ? 0 : (n - first) / KEYS + 1;
    }

    static final class Pause extends RichMapFunction<Long, Tuple3<Long, Long, Long>> {
        private static final long serialVersionUID = 1L;
        private final long every;
        private long seen;

        Pause(long every) {
            this.every = every;
        }

        @Override
        public Tuple3<Long, Long, Long> map(Long x) throws Exception {
            if (every > 0 && ++seen % every == 0) {
                Thread.sleep(1);
            }
            return Tuple3.of(x % KEYS, x, 1L);
        }
    }
}
