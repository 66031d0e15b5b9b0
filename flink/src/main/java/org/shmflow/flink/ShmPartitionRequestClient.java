/*
 * The consumer-side client for one producer TaskManager on this host.
 */
package org.shmflow.flink;

import org.apache.flink.runtime.event.TaskEvent;
import org.apache.flink.runtime.io.network.PartitionRequestClient;
import org.apache.flink.runtime.io.network.api.serialization.EventSerializer;
import org.apache.flink.runtime.io.network.netty.exception.LocalTransportException;
import org.apache.flink.runtime.io.network.partition.ResultPartitionID;
import org.apache.flink.runtime.io.network.partition.ResultSubpartitionIndexSet;
import org.apache.flink.runtime.io.network.partition.consumer.RemoteInputChannel;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.TimeUnit;

/**
 * Flink's {@link PartitionRequestClient} over the arena, with the semantics of Netty's
 * {@code NettyPartitionRequestClient}: the outgoing messages of a channel reach the producer in
 * call order (as through Netty's pipeline), credit is read with
 * {@code getAndResetUnannouncedCredit()} when the announcement is sent, failures end in
 * {@code RemoteInputChannel.onError}.
 */
final class ShmPartitionRequestClient implements PartitionRequestClient {
    private final ShmTransport t;
    private final long producerPeer;
    private final SocketAddress remote;

    ShmPartitionRequestClient(ShmTransport t, long producerPeer, SocketAddress remote) {
        this.t = t;
        this.producerPeer = producerPeer;
        this.remote = remote;
    }

    private ClientChannel of(RemoteInputChannel ch) {
        return t.clientByInput.get(ch.getInputChannelId());
    }

    @Override
    public void requestSubpartition(
            ResultPartitionID partitionId, ResultSubpartitionIndexSet indexSet, RemoteInputChannel ch, int delayMs)
            throws IOException {
        if (delayMs == 0) {
            doRequest(partitionId, indexSet, ch);
            return;
        }
        try {
            t.delayed.schedule(() -> doRequest(partitionId, indexSet, ch), delayMs, TimeUnit.MILLISECONDS);
        } catch (RejectedExecutionException e) {
            throw new IOException("shmflow: the transport is shut down", e);
        }
    }

    private void doRequest(ResultPartitionID partitionId, ResultSubpartitionIndexSet indexSet, RemoteInputChannel ch) {
        ClientChannel old = t.clientByInput.get(ch.getInputChannelId());
        if (old != null) {
            old.close(true);
        }
        if (ch.isReleased()) {
            return;
        }
        long[] out = new long[2];
        int rc = Native.connect(t.arena, producerPeer, out);
        if (rc < 0) {
            ch.onError(new LocalTransportException(
                    "shmflow: connecting to '" + remote + "' through shared memory failed: " + Native.lastError(), remote));
            return;
        }
        ClientChannel c = new ClientChannel(t, out[0], (int) out[1], ch, remote);
        t.clientById.put(c.id, c);
        t.clientByInput.put(ch.getInputChannelId(), c);
        t.metrics.channelOpened();
        try {
            ByteArrayOutputStream bo = new ByteArrayOutputStream(128);
            DataOutputStream o = new DataOutputStream(bo);
            byte[] pid = partitionId.getBytes();
            o.writeInt(pid.length);
            o.write(pid);
            o.writeInt(indexSet.getStartIndex());
            o.writeInt(indexSet.getEndIndex());
            o.writeLong(ch.getInputChannelId().getUpperPart());
            o.writeLong(ch.getInputChannelId().getLowerPart());
            o.flush();
            c.sendPayload(Native.KIND_REQUEST, bo.toByteArray(), ch.getInitialCredit());
        } catch (IOException e) {
            c.close(false);
            ch.onError(new LocalTransportException(
                    String.format("Sending the partition request to '%s' failed.", remote), remote, e));
            return;
        }
        // Credit that became available while the request was on its way.
        c.announceCredit();
    }

    // Every message below is sent from the calling thread under the channel's lock, so the
    // producer sees them in call order, as Netty's pipeline delivers them (a resume after
    // which credit is announced must not be overtaken by that credit). Credit is read with
    // getAndResetUnannouncedCredit() under the same lock, when it is sent.

    @Override
    public void notifyCreditAvailable(RemoteInputChannel ch) {
        ClientChannel c = of(ch);
        if (c != null) {
            c.announceCredit();
            if (c.t.deliverOnCredit) {
                // A buffer came back: whatever already arrived goes to the channel now.
                c.deliverFromCaller();
            }
        }
    }

    @Override
    public void notifyNewBufferSize(RemoteInputChannel ch, int bufferSize) {
        ClientChannel c = of(ch);
        if (c != null) {
            c.sendSimple(Native.KIND_BUFFER_SIZE, 0, bufferSize);
        }
    }

    @Override
    public void notifyRequiredSegmentId(RemoteInputChannel ch, int subpartitionId, int segmentId) {
        ClientChannel c = of(ch);
        if (c != null) {
            c.sendSimple(Native.KIND_SEGMENT_ID, subpartitionId, segmentId);
        }
    }

    @Override
    public void resumeConsumption(RemoteInputChannel ch) {
        ClientChannel c = of(ch);
        if (c != null) {
            c.sendSimple(Native.KIND_RESUME, 0, 0);
        }
    }

    @Override
    public void acknowledgeAllRecordsProcessed(RemoteInputChannel ch) {
        ClientChannel c = of(ch);
        if (c != null) {
            c.sendSimple(Native.KIND_ACK_ALL, 0, 0);
        }
    }

    @Override
    public void sendTaskEvent(ResultPartitionID partitionId, TaskEvent event, RemoteInputChannel ch) throws IOException {
        ByteBuffer ev = EventSerializer.toSerializedEvent(event);
        byte[] pid = partitionId.getBytes();
        ByteArrayOutputStream bo = new ByteArrayOutputStream(8 + pid.length + ev.remaining());
        DataOutputStream o = new DataOutputStream(bo);
        o.writeInt(pid.length);
        o.write(pid);
        byte[] evb = new byte[ev.remaining()];
        ev.get(evb);
        o.write(evb);
        o.flush();
        ClientChannel c = of(ch);
        try {
            if (c == null) {
                throw new IOException("shmflow: no open channel for this input channel");
            }
            c.sendPayload(Native.KIND_TASK_EVENT, bo.toByteArray(), 0);
        } catch (IOException e) {
            ch.onError(new LocalTransportException(
                    String.format("Sending the task event to '%s' failed.", remote), remote, e));
        }
    }

    @Override
    public void close(RemoteInputChannel ch) throws IOException {
        ClientChannel c = of(ch);
        if (c != null) {
            c.close(true);
        }
    }
}
