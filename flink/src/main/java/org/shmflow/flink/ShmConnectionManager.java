/*
 * Flink's ConnectionManager, choosing per producer TaskManager between shared memory and Netty.
 */
package org.shmflow.flink;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.runtime.clusterframework.types.ResourceID;
import org.apache.flink.runtime.io.network.ConnectionID;
import org.apache.flink.runtime.io.network.ConnectionManager;
import org.apache.flink.runtime.io.network.PartitionRequestClient;
import org.apache.flink.runtime.io.network.TaskEventPublisher;
import org.apache.flink.runtime.io.network.partition.ResultPartitionProvider;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.File;
import java.io.IOException;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Wraps Netty's connection manager. {@link #start()} starts Netty (its port stays the
 * TaskManager's data port, for TaskManagers on other hosts) and attaches to the host's arena,
 * registering this TaskManager. A partition request client is ours when the producer's
 * TaskManager is registered on this host's arena with a live process, Netty's otherwise. When
 * the arena cannot be had, one warning is logged and every exchange goes through Netty.
 */
public final class ShmConnectionManager implements ConnectionManager {
    private static final Logger LOG = LoggerFactory.getLogger(ShmConnectionManager.class);
    /** Why the last TaskManager of this JVM fell back to Netty (null: it did not). For tests. */
    static volatile String lastFallback;

    private final ConnectionManager netty;
    private final ResultPartitionProvider partitions;
    private final TaskEventPublisher events;
    private final Configuration conf;
    private final ResourceID self;
    private final int segmentSize;
    private final MetricGroup metricGroup;
    private final ShmMetrics metrics;
    private final ConcurrentHashMap<ConnectionID, ShmPartitionRequestClient> clients = new ConcurrentHashMap<>();
    /** Peer handles (slot and generation, see {@link Native#lookup}) of the producers. */
    private final ConcurrentHashMap<ConnectionID, Long> peers = new ConcurrentHashMap<>();
    private volatile ShmTransport transport;

    ShmConnectionManager(
            ConnectionManager netty,
            ResultPartitionProvider partitions,
            TaskEventPublisher events,
            Configuration conf,
            ResourceID self,
            int segmentSize,
            MetricGroup metricGroup) {
        this.netty = netty;
        this.partitions = partitions;
        this.events = events;
        this.conf = conf;
        this.self = self;
        this.segmentSize = segmentSize;
        this.metricGroup = metricGroup;
        this.metrics = new ShmMetrics(metricGroup);
    }

    @Override
    public int start() throws IOException {
        int port = netty.start();
        if (!conf.get(ShmflowOptions.ENABLED)) {
            LOG.info("shmflow: disabled (shmflow.enabled: false); every exchange goes through Netty");
            return port;
        }
        String user = ShmflowOptions.user();
        String name = conf.getOptional(ShmflowOptions.ARENA_NAME).orElse("shmflow-flink-" + user);
        String dir = conf.getOptional(ShmflowOptions.REGISTRY_DIR)
                .orElse("/dev/shm" + File.separator + "shmflow-flink-" + user + ".registry");
        long size = conf.get(ShmflowOptions.ARENA_SIZE).getBytes();
        long spin = conf.get(ShmflowOptions.SPIN_NS);
        int timeout = conf.get(ShmflowOptions.TIMEOUT_MS);
        long arena = 0;
        try {
            if (timeout <= 0 || timeout > 3_600_000) {
                throw new IOException("shmflow.timeout-ms must be in 1..3600000, not " + timeout);
            }
            Native.load(conf.getOptional(ShmflowOptions.NATIVE_LIBRARY).orElse(null));
            long[] out = new long[1];
            int rc = Native.open(name, dir, self.getResourceIdString(), size, segmentSize, spin, out);
            if (rc < 0) {
                throw Native.error("attaching to arena /dev/shm/" + name + " (registry " + dir + ")", rc);
            }
            arena = out[0];
            long consumerSpin = conf.get(ShmflowOptions.CONSUMER_SPIN_NS);
            rc = Native.setSpin(arena, Native.CONSUMER, consumerSpin);
            if (rc < 0) {
                throw Native.error("shmflow.consumer.spin-ns", rc);
            }
            ShmTransport t = new ShmTransport(
                    arena, name, dir, self, timeout, conf.get(ShmflowOptions.ZERO_COPY),
                    conf.get(ShmflowOptions.ZERO_COPY_MAX_SEGMENTS), conf.get(ShmflowOptions.DIRECT),
                    (int) Math.min(Integer.MAX_VALUE, conf.get(ShmflowOptions.DIRECT_MAX_BYTES).getBytes()),
                    conf.get(ShmflowOptions.DELIVER_ON_CREDIT), conf.get(ShmflowOptions.BANKED_CREDIT),
                    conf.get(ShmflowOptions.TASK_POLLS), spin, consumerSpin, partitions, events, metrics);
            metrics.arenaGauges(metricGroup, t::freeSegments, t::totalSegments);
            transport = t;
            lastFallback = null;
            LOG.info("shmflow: TaskManager {} attached to arena /dev/shm/{} (slot {}, {} segments of {} bytes, registry {}, zero-copy cap {})",
                    self, name, t.slot, t.totalSegments(), segmentSize, dir, t.zeroCopyMax());
        } catch (IOException | RuntimeException e) {
            if (arena != 0) {
                Native.close(arena);
            }
            lastFallback = e.getMessage();
            LOG.warn("shmflow: falling back to Netty for every exchange of TaskManager {}: {}", self, e.getMessage());
        }
        return port;
    }

    /** The transport, or null after a fallback (tests). */
    ShmTransport transport() {
        return transport;
    }

    @Override
    public PartitionRequestClient createPartitionRequestClient(ConnectionID id) throws IOException, InterruptedException {
        ShmTransport t = transport;
        if (t != null) {
            Long known = peers.get(id);
            long peer;
            if (known != null && Native.peerState(t.arena, known) == 2) {
                peer = known;
            } else {
                peer = Native.lookup(t.arena, id.getResourceID().getResourceIdString());
                if (known == null || peer != known) {
                    // A client of the previous registration would connect to it (and fail),
                    // never to this one: a slot's next holder has another generation.
                    clients.remove(id);
                }
                if (peer >= 0) {
                    peers.put(id, peer);
                } else {
                    peers.remove(id);
                }
            }
            if (peer >= 0 && (int) (peer & 0xffffffffL) != t.slot) {
                long p = peer;
                return clients.computeIfAbsent(id, k -> new ShmPartitionRequestClient(t, p, k.getAddress()));
            }
        }
        metrics.nettyClient();
        return netty.createPartitionRequestClient(id);
    }

    @Override
    public void closeOpenChannelConnections(ConnectionID id) {
        clients.remove(id);
        netty.closeOpenChannelConnections(id);
    }

    @Override
    public int getNumberOfActiveConnections() {
        return netty.getNumberOfActiveConnections() + clients.size();
    }

    @Override
    public void shutdown() throws IOException {
        ShmTransport t = transport;
        transport = null;
        if (t != null) {
            t.close();
        }
        netty.shutdown();
    }
}
