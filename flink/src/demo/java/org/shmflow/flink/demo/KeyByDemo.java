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
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.CloseableIterator;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;

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
 * checkpoints and for a TaskManager to be killed under it), {@code --out DIR} (failure runs: the
 * final sums go to files in DIR, shared by the TaskManagers, instead of the collect sink).
 */
public final class KeyByDemo {
    static final int KEYS = 13;

    private KeyByDemo() {}

    public static void main(String[] args) throws Exception {
        long n = 20_000_000L;
        long pauseEvery = 20_000L;
        String out = null;
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (args[i].equals("--records")) {
                n = Long.parseLong(args[i + 1]);
            } else if (args[i].equals("--pause-every")) {
                pauseEvery = Long.parseLong(args[i + 1]);
            } else if (args[i].equals("--out")) {
                out = args[i + 1];
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
        DataStream<Tuple3<Long, Long, Long>> sums = env.fromSequence(1, n)
                .map(new Pause(pause))
                .returns(Types.TUPLE(Types.LONG, Types.LONG, Types.LONG))
                .keyBy(p -> p.f0)
                .reduce((a, b) -> Tuple3.of(a.f0, a.f1 + b.f1, a.f2 + b.f2));
        if (out == null) {
            // Only every 100000th running sum and the last one of each key go back to the
            // client (the collect sink is not what this job measures).
            CloseableIterator<Tuple3<Long, Long, Long>> it = sums
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
        } else {
            // Failure runs: Flink 2.3's collect sink takes its TaskManager down when it is
            // cancelled while initializing (a NullPointerException in its close), so the final
            // sum of each key goes to a file instead (the last write wins; a replay after a
            // restore writes the same value again).
            final String dir = out;
            sums.filter(p -> p.f2 == count(p.f0, records))
                    .map(p -> {
                        Path tmp = Paths.get(dir, "key-" + p.f0 + ".tmp");
                        Files.write(tmp, (p.f1 + "\n").getBytes(StandardCharsets.UTF_8));
                        Files.move(tmp, Paths.get(dir, "key-" + p.f0), StandardCopyOption.REPLACE_EXISTING);
                        return p.f0;
                    })
                    .returns(Types.LONG)
                    .sinkTo(new DiscardingSink<>());
            env.execute("shmflow keyBy with failures");
            for (long k = 0; k < KEYS; k++) {
                Path f = Paths.get(dir, "key-" + k);
                if (Files.exists(f)) {
                    max.put(k, Long.parseLong(new String(Files.readAllBytes(f), StandardCharsets.UTF_8).trim()));
                }
            }
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
