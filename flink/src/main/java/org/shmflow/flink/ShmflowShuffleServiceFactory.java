/*
 * The shuffle service factory: Flink's Netty shuffle environment with a connection manager
 * that uses shared memory between TaskManagers of one host.
 */
package org.shmflow.flink;

import org.apache.flink.runtime.io.network.ConnectionManager;
import org.apache.flink.runtime.io.network.LocalConnectionManager;
import org.apache.flink.runtime.io.network.NettyShuffleEnvironment;
import org.apache.flink.runtime.io.network.NettyShuffleServiceFactory;
import org.apache.flink.runtime.io.network.netty.NettyConnectionManager;
import org.apache.flink.runtime.io.network.partition.ResultPartition;
import org.apache.flink.runtime.io.network.partition.ResultPartitionManager;
import org.apache.flink.runtime.io.network.partition.consumer.SingleInputGate;
import org.apache.flink.runtime.shuffle.NettyShuffleDescriptor;
import org.apache.flink.runtime.shuffle.NettyShuffleMaster;
import org.apache.flink.runtime.shuffle.ShuffleEnvironmentContext;
import org.apache.flink.runtime.shuffle.ShuffleMasterContext;
import org.apache.flink.runtime.shuffle.ShuffleServiceFactory;
import org.apache.flink.runtime.taskmanager.NettyShuffleEnvironmentConfiguration;

/**
 * Set {@code shuffle-service-factory.class: org.shmflow.flink.ShmflowShuffleServiceFactory}
 * (jar in {@code lib/} of the JobManager and every TaskManager). Flink keeps its partitions,
 * gates, credits, checkpoints and scheduling (this is its own {@link NettyShuffleEnvironment},
 * built through the public 9-argument factory method); only the connection manager differs.
 */
public class ShmflowShuffleServiceFactory
        implements ShuffleServiceFactory<NettyShuffleDescriptor, ResultPartition, SingleInputGate> {
    private final NettyShuffleServiceFactory netty = new NettyShuffleServiceFactory();

    @Override
    public NettyShuffleMaster createShuffleMaster(ShuffleMasterContext context) {
        return netty.createShuffleMaster(context);
    }

    @Override
    public NettyShuffleEnvironment createShuffleEnvironment(ShuffleEnvironmentContext c) {
        NettyShuffleEnvironmentConfiguration cfg = NettyShuffleEnvironmentConfiguration.fromConfiguration(
                c.getConfiguration(), c.getNetworkMemorySize(), c.isLocalCommunicationOnly(), c.getHostAddress());
        ResultPartitionManager rpm = new ResultPartitionManager(cfg.getPartitionRequestListenerTimeout(), c.getScheduledExecutor());
        ConnectionManager cm;
        if (cfg.nettyConfig() == null) {
            // Local communication only (one TaskManager): nothing crosses TaskManagers.
            cm = new LocalConnectionManager();
        } else {
            ConnectionManager base = new NettyConnectionManager(
                    rpm, c.getEventPublisher(), cfg.nettyConfig(), cfg.isConnectionReuseEnabled());
            cm = new ShmConnectionManager(
                    base,
                    rpm,
                    c.getEventPublisher(),
                    c.getConfiguration(),
                    c.getTaskExecutorResourceId(),
                    cfg.networkBufferSize(),
                    c.getParentMetricGroup());
        }
        return NettyShuffleServiceFactory.createNettyShuffleEnvironment(
                cfg,
                c.getTaskExecutorResourceId(),
                c.getEventPublisher(),
                rpm,
                cm,
                c.getParentMetricGroup(),
                c.getIoExecutor(),
                c.getNumberOfSlots(),
                c.getTmpDirPaths());
    }
}
