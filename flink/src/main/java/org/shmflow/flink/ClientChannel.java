/*
 * Consumer end of one shared-memory channel: what Netty's CreditBasedPartitionRequestClientHandler
 * does for one RemoteInputChannel.
 */
package org.shmflow.flink;

import org.apache.flink.core.memory.MemorySegment;
import org.apache.flink.core.memory.MemorySegmentFactory;
import org.apache.flink.runtime.io.network.buffer.Buffer;
import org.apache.flink.runtime.io.network.buffer.BufferRecycler;
import org.apache.flink.runtime.io.network.buffer.FreeingBufferRecycler;
import org.apache.flink.runtime.io.network.buffer.NetworkBuffer;
import org.apache.flink.runtime.io.network.netty.exception.RemoteTransportException;
import org.apache.flink.runtime.io.network.partition.consumer.RemoteInputChannel;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.ByteArrayInputStream;
import java.io.ObjectInputStream;
import java.net.SocketAddress;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Delivers what the producer sent on one channel to its {@link RemoteInputChannel}. A data
 * buffer takes a buffer of the channel's own pool ({@code requestBuffer()}, which is what
 * carries Flink's credit), then either
 * <ul>
 *   <li>zero copy ({@code shmflow.consumer.zero-copy: true}, the default): the arena
 *       segment itself is handed to Flink, wrapped as a {@link NetworkBuffer} whose recycler
 *       releases the segment and then recycles the pool buffer it held as its credit token
 *       (so Flink announces the credit exactly when it would have for its own buffer), while
 *       the TaskManager holds fewer than {@code shmflow.consumer.zero-copy-max-segments}
 *       such segments; or
 *   <li>one copy (zero copy off, or at that limit): the segment is copied into the pool
 *       buffer and released at once.
 * </ul>
 * All deliveries hold {@link #lock}, as does {@link #close}, so no buffer reaches a
 * channel after it was closed, and each delivery takes a batch from the ring and hands it
 * on in order. Two threads deliver: the consumer dispatcher when the producer marks the
 * channel, and the thread that announces credit (the task thread recycling a buffer it
 * read: {@link #deliverFromCaller}) when it gets the lock at once, so a task that keeps
 * up finds the next buffers in its channel without waiting for the dispatcher to wake and
 * wake it. Messages to the producer go out under their own lock (see {@link #sendSimple}). The native channel end is closed when this end is closed
 * and every zero-copy buffer handed out was recycled ({@link #refs}), so no segment Flink
 * still reads goes back to the producer, and none stays held once Flink let go of them.
 */
final class ClientChannel {
    private static final Logger LOG = LoggerFactory.getLogger(ClientChannel.class);
    private static final Buffer.DataType[] TYPES = Buffer.DataType.values();

    final ShmTransport t;
    final long handle;
    final int id;
    final RemoteInputChannel input;
    final SocketAddress remote;
    /** Set under {@link #lock}; read by senders under {@link #sendLock}. */
    private volatile boolean closed;
    /** Guards delivery and closing (see the class comment). */
    private final ReentrantLock lock = new ReentrantLock();
    /** Messages of one poll (used under {@link #lock}). */
    private final int[] msgs = new int[64 * Native.MSG_INTS];
    /** Data buffers handed to the input channel (under {@link #lock}). */
    private long delivered;
    /** Orders the messages this end sends (credit, resume, ...) as they were called. */
    private final Object sendLock = new Object();
    /** One for the open channel plus one per zero-copy buffer not yet recycled. */
    private final AtomicInteger refs = new AtomicInteger(1);
    /**
     * Zero-copy buffers of this channel not yet recycled, with shmflow.consumer.task-polls:
     * while there are any the task polls (the native word is set), so the producer does not
     * wake the dispatcher for data buffers; their recyclers deliver instead.
     */
    private final AtomicInteger polling = new AtomicInteger();
    /**
     * A recycler wants the ring polled: set before it tries {@link #lock}; whoever holds the
     * lock looks at it after letting go (see {@link #unlockAndRecheck}), so a poll a
     * recycler could not do itself is never lost.
     */
    private volatile boolean pollWanted;

    ClientChannel(ShmTransport t, long handle, int id, RemoteInputChannel input, SocketAddress remote) {
        this.t = t;
        this.handle = handle;
        this.id = id;
        this.input = input;
        this.remote = remote;
    }

    /** Consumer dispatcher: takes everything queued and hands it to the input channel. */
    void drain() {
        lock.lock();
        try {
            drainLocked();
        } finally {
            unlockAndRecheck();
        }
    }

    /**
     * Lets go of {@link #lock}, then does the polls recyclers asked for while it was held
     * (they only try the lock). Bounded: each round is one batch of deliveries.
     */
    private void unlockAndRecheck() {
        lock.unlock();
        if (pollWanted && !lock.isHeldByCurrentThread()) {
            pollFromRecycler();
        }
    }

    /**
     * A zero-copy buffer's recycler (task polls): hands Flink what arrived on this channel,
     * now or, when another thread holds the lock, through that thread's recheck. Not from
     * inside a delivery of this thread (Flink may recycle from onBuffer): that delivery
     * polls on until the ring is empty and rechecks when it lets go.
     */
    private void pollFromRecycler() {
        pollWanted = true;
        if (lock.isHeldByCurrentThread()) {
            return;
        }
        int round = 0;
        for (; round < 1_000 && pollWanted && !closed && lock.tryLock(); round++) {
            try {
                pollWanted = false;
                long before = delivered;
                drainLocked();
                if (delivered != before) {
                    t.metrics.onRecycle((int) (delivered - before));
                }
            } finally {
                lock.unlock();
            }
        }
        if (round == 1_000 && pollWanted && !closed) {
            // Out by the bound with a poll still wanted (others kept asking while this one
            // delivered): nobody else may take the lock soon, and the producer did not mark
            // for the buffer behind it, so the dispatcher polls (drain rechecks pollWanted).
            t.handOffPoll(this);
        }
    }

    /**
     * Consumer dispatcher, every liveness period: polls a channel whose task polls (a
     * backstop: a zero-copy buffer held long, e.g. by the checkpoint's channel-state writer,
     * delays the data behind it by at most this period).
     */
    void pollIfTaskPolls() {
        if (polling.get() > 0 || pollWanted) {
            drain();
        }
    }

    /**
     * The thread that announced credit (Flink calls notifyCreditAvailable when a buffer of
     * this channel comes back, mostly from the task thread) delivers what is queued, when
     * nobody else is delivering: never waits for the lock, never from inside a delivery of
     * its own (Flink announces credit from onBuffer too, and a nested delivery would hand
     * on later buffers before the rest of the batch).
     */
    void deliverFromCaller() {
        if (closed || lock.isHeldByCurrentThread() || !lock.tryLock()) {
            return;
        }
        try {
            long before = delivered;
            drainLocked();
            if (delivered != before) {
                t.metrics.onCredit((int) (delivered - before));
            }
        } finally {
            unlockAndRecheck();
        }
    }

    private void drainLocked() {
        if (closed) {
            return;
        }
        // Bounded: each round takes up to 64 messages; the producer can queue at most a
        // ring's worth (64) plus what it publishes meanwhile, which its credit limits.
        for (int round = 0; round < 1_000_000 && !closed; round++) {
            int k = Native.poll(handle, msgs);
            if (k < 0) {
                if (k == Native.EPEER) {
                    failPeer(Native.status(handle) == 2);
                } else {
                    fail(new RemoteTransportException("shmflow: channel from '" + remote + "' failed: " + Native.lastError(), remote));
                }
                return;
            }
            if (k == 0) {
                return;
            }
            for (int i = 0; i < k; i++) {
                int o = i * Native.MSG_INTS;
                if (closed) {
                    // Closed by a callback below: give the remaining segments back.
                    if (msgs[o + 1] >= 0) {
                        Native.release(handle, msgs[o + 1]);
                    }
                    continue;
                }
                try {
                    onMessage(msgs, o);
                } catch (Throwable e) {
                    fail(e);
                }
            }
        }
    }

    private void onMessage(int[] m, int o) throws Exception {
        int kind = m[o];
        int seg = m[o + 1];
        int size = m[o + 2];
        switch (kind) {
            case Native.KIND_BUFFER:
                onBuffer(seg, size, m[o + 3], m[o + 4], m[o + 5], m[o + 6], m[o + 7] != 0);
                break;
            case Native.KIND_BACKLOG:
                input.onSenderBacklog(m[o + 8]);
                break;
            case Native.KIND_ERROR:
                {
                    Throwable cause;
                    try {
                        byte[] b = t.readSegment(seg, size);
                        Native.release(handle, seg);
                        try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(b))) {
                            cause = (Throwable) in.readObject();
                        }
                    } catch (Exception e) {
                        cause = new java.io.IOException("shmflow: the producer reported an error that could not be read", e);
                    }
                    if (m[o + 8] == 1) {
                        input.onFailedPartitionRequest();
                    } else {
                        fail(new RemoteTransportException("Error at remote task manager '" + remote + "'.", remote, cause));
                    }
                    break;
                }
            default:
                if (seg >= 0) {
                    Native.release(handle, seg);
                }
                fail(new RemoteTransportException("shmflow: unknown message kind " + kind + " from '" + remote + "'", remote));
        }
    }

    private void onBuffer(int seg, int size, int subpartition, int seq, int backlog, int dataType, boolean compressed)
            throws Exception {
        if (dataType < 0 || dataType >= TYPES.length) {
            if (seg >= 0) {
                Native.release(handle, seg);
            }
            throw new IllegalStateException("shmflow: unknown buffer data type " + dataType);
        }
        Buffer.DataType dt = TYPES[dataType];
        if (Diag.ON && seg >= 0 && dt.isBuffer()) {
            Diag.hop(t.onConsumerThread() ? Diag.C_DISPATCHER : Diag.C_OTHER, t, seg * t.segmentSize, size);
        }
        if (dt.isBuffer() && size == 0) {
            input.onEmptyBuffer(seq, backlog);
            return;
        }
        Buffer b;
        if (dt.isBuffer()) {
            b = input.requestBuffer();
            if (b == null) {
                Native.release(handle, seg);
                if (input.isReleased()) {
                    return;
                }
                throw new IllegalStateException("No buffer available in credit-based input channel.");
            }
            boolean zc = t.zeroCopy && t.takeZeroCopySlot();
            if (t.zeroCopy && !zc) {
                t.metrics.copiedAtLimit();
            }
            if (zc) {
                Buffer slice;
                try {
                    slice = arenaBuffer(seg, size, dt, compressed, b);
                } catch (RuntimeException e) {
                    t.returnZeroCopySlot();
                    b.recycleBuffer();
                    Native.release(handle, seg);
                    throw e;
                }
                t.metrics.received(size, true);
                if (Diag.ON) {
                    Diag.delivered(seg, size);
                }
                delivered++;
                t.lastBufferSmall = size <= t.flushedMaxBytes;
                input.onBuffer(slice, seq, backlog, subpartition);
                return;
            }
        } else {
            b = new NetworkBuffer(MemorySegmentFactory.wrap(new byte[size]), FreeingBufferRecycler.INSTANCE, dt, size);
        }
        try {
            t.copyOutOfSegment(seg, size, b);
        } catch (RuntimeException e) {
            b.recycleBuffer();
            Native.release(handle, seg);
            throw e;
        }
        Native.release(handle, seg);
        b.setSize(size);
        b.setDataType(dt);
        b.setCompressed(compressed);
        t.metrics.received(size, false);
        if (dt.isBuffer()) {
            delivered++;
            t.lastBufferSmall = size <= t.flushedMaxBytes;
        }
        input.onBuffer(b, seq, backlog, subpartition);
    }

    /** Segment {@code seg} as a Flink buffer that holds {@code token} until it is recycled. */
    private Buffer arenaBuffer(int seg, int size, Buffer.DataType dt, boolean compressed, Buffer token) {
        MemorySegment ms = t.segmentView(seg);
        refs.incrementAndGet();
        if (t.taskPolls && polling.getAndIncrement() == 0) {
            // Before Flink sees the buffer: its recycler is what polls from now on.
            Native.taskPolls(handle, 1);
        }
        return new NetworkBuffer(ms, new SegmentRecycler(seg, token), dt, compressed, size);
    }

    /**
     * Recycler of one zero-copy buffer: releases the arena segment, then the credit token.
     * Called once (NetworkBuffer's reference count), from whichever thread lets go last (the
     * task thread, the channel-state writer for unaligned checkpoints, a release). Returning
     * the credit token may deliver what already arrived on a channel (deliver-on-credit), but
     * that only ever tries a channel's {@link #lock} ({@code tryLock}, never {@code lock()})
     * and skips it when held, so it cannot deadlock with a delivery that holds Flink's locks;
     * such a delivery may nest inside the dispatcher's delivery of another channel, which is
     * safe for the same reason.
     */
    private final class SegmentRecycler implements BufferRecycler {
        private final int seg;
        private final Buffer token;

        SegmentRecycler(int seg, Buffer token) {
            this.seg = seg;
            this.token = token;
        }

        @Override
        public void recycle(MemorySegment memorySegment) {
            if (Diag.ON) {
                Diag.recycled(t, seg);
            }
            try {
                int rc = Native.release(handle, seg);
                if (rc < 0) {
                    LOG.warn("shmflow: releasing segment {} of channel {} failed: {}", seg, id, Native.lastError());
                }
            } finally {
                t.returnZeroCopySlot();
                try {
                    // After the segment: the credit this announces lets the producer send
                    // again. It throws on a channel that failed and is not yet released
                    // (RemoteInputChannel.notifyCreditAvailable's checkError, which
                    // Flink's BufferManager.recycle rethrows as Flink's own recyclers do):
                    // that propagates, after the rest below, so the native end still
                    // closes once the last reference goes.
                    token.recycleBuffer();
                } finally {
                    afterTokenRecycled();
                }
            }
        }

        private void afterTokenRecycled() {
            try {
                if (t.taskPolls) {
                    if (polling.decrementAndGet() == 0) {
                        // The last one out: the producer marks again; what it published
                        // before it saw that is found by the poll below (the fence pair).
                        Native.taskPolls(handle, 0);
                    }
                    if (!closed) {
                        pollFromRecycler();
                    }
                }
            } finally {
                unref();
            }
        }
    }

    /** Drops one reference; the last closes the native channel end. */
    private void unref() {
        if (refs.decrementAndGet() == 0) {
            Native.closeChannel(handle);
        }
    }

    /** Consumer dispatcher, every liveness period: a dead producer fails the channel. */
    void checkPeer() {
        lock.lock();
        try {
            if (closed) {
                return;
            }
            int s = Native.status(handle);
            if (s != 0) {
                // Deliver what it published before it left; then the poll reports EPEER.
                drainLocked();
                if (!closed) {
                    failPeer(s == 2);
                }
            }
        } finally {
            unlockAndRecheck();
        }
    }

    private void failPeer(boolean died) {
        if (died) {
            t.reclaimDead();
        }
        String msg = died
                ? "Lost connection to task manager '" + remote + "' (its process died; noticed through shared memory). "
                        + "This indicates that the remote task manager was lost."
                : "Connection unexpectedly closed by remote task manager '" + remote + "'. "
                        + "This might indicate that the remote task manager was lost.";
        fail(new RemoteTransportException(msg, remote));
    }

    private void fail(Throwable e) {
        lock.lock();
        try {
            if (closed) {
                return;
            }
            LOG.debug("shmflow: channel {} fails", id, e);
            close(false);
            input.onError(e);
        } finally {
            lock.unlock();
        }
    }

    /** Closes this end (telling the producer to cancel first when {@code cancel}). */
    void close(boolean cancel) {
        lock.lock();
        try {
            if (closed) {
                return;
            }
            closed = true;
            if (Diag.ON) {
                Diag.dump(LOG, "input channel " + id + " closed");
            }
            t.clientById.remove(id, this);
            t.clientByInput.remove(input.getInputChannelId(), this);
            // After a sender that saw the channel open is done (lock order: lock, then sendLock).
            synchronized (sendLock) {
                if (cancel) {
                    Native.send(handle, Native.KIND_CANCEL, -1, 0, 0, 0, 0, 0, 0, 0L, 0);
                }
            }
            // The native end closes now, or when the last zero-copy buffer comes back.
            unref();
        } finally {
            lock.unlock();
        }
    }

    boolean isClosed() {
        return closed;
    }

    // Messages to the producer go out under sendLock, not the delivery lock: a task thread
    // announcing credit (Flink calls notifyCreditAvailable when it recycles a buffer) does
    // not wait for the dispatcher to finish delivering a batch. A failure is reported after
    // sendLock is let go (fail takes lock).

    /** Sends a message without payload; false (and the channel failed) when it cannot. */
    boolean sendSimple(int kind, int subpartition, long arg) {
        String err;
        synchronized (sendLock) {
            if (closed) {
                return false;
            }
            int rc = Native.send(handle, kind, -1, 0, subpartition, 0, 0, 0, 0, arg, t.timeoutMs);
            if (rc >= 0) {
                return true;
            }
            err = "shmflow: sending to '" + remote + "' failed: " + Native.lastError();
        }
        fail(new org.apache.flink.runtime.io.network.netty.exception.LocalTransportException(err, remote));
        return false;
    }

    /** Announces the input channel's unannounced credit, read when it is sent. */
    void announceCredit() {
        String err;
        synchronized (sendLock) {
            if (closed || input.isReleased()) {
                return;
            }
            int credit = input.getAndResetUnannouncedCredit();
            if (credit <= 0) {
                return;
            }
            // Banked only with positive initial credit: there resume-consumption keeps the
            // credit, so credit need not be ordered with the channel's messages.
            int rc = t.bankedCredit && input.getInitialCredit() > 0
                    ? Native.bankCredit(handle, credit)
                    : Native.addCredit(handle, credit, t.timeoutMs);
            if (rc >= 0) {
                return;
            }
            err = "shmflow: announcing credit to '" + remote + "' failed: " + Native.lastError();
        }
        fail(new org.apache.flink.runtime.io.network.netty.exception.LocalTransportException(err, remote));
    }

    /** Sends a message with {@code payload} in a segment. */
    void sendPayload(int kind, byte[] payload, long arg) throws java.io.IOException {
        synchronized (sendLock) {
            if (closed) {
                throw new java.io.IOException("shmflow: channel to '" + remote + "' is closed");
            }
            int seg = t.writeSegment(handle, payload);
            int rc = Native.send(handle, kind, seg, payload.length, 0, 0, 0, 0, 0, arg, t.timeoutMs);
            if (rc < 0) {
                java.io.IOException e = Native.error("sending to '" + remote + "'", rc);
                Native.release(handle, seg);
                throw e;
            }
        }
    }
}
