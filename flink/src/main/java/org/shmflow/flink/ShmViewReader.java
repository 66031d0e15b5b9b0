/*
 * Producer end of one shared-memory channel: Netty's CreditBasedSequenceNumberingViewReader
 * plus the part of PartitionRequestServerHandler / PartitionRequestQueue that serves it.
 */
package org.shmflow.flink;

import org.apache.flink.runtime.event.TaskEvent;
import org.apache.flink.runtime.io.network.NetworkSequenceViewReader;
import org.apache.flink.runtime.io.network.api.serialization.EventSerializer;
import org.apache.flink.runtime.io.network.buffer.Buffer;
import org.apache.flink.runtime.io.network.buffer.FullyFilledBuffer;
import org.apache.flink.runtime.io.network.netty.NettyPartitionRequestListener;
import org.apache.flink.runtime.io.network.partition.BufferAvailabilityListener;
import org.apache.flink.runtime.io.network.partition.PartitionNotFoundException;
import org.apache.flink.runtime.io.network.partition.PartitionRequestListener;
import org.apache.flink.runtime.io.network.partition.ProducerFailedException;
import org.apache.flink.runtime.io.network.partition.ResultPartition;
import org.apache.flink.runtime.io.network.partition.ResultPartitionID;
import org.apache.flink.runtime.io.network.partition.ResultPartitionProvider;
import org.apache.flink.runtime.io.network.partition.ResultSubpartitionIndexSet;
import org.apache.flink.runtime.io.network.partition.ResultSubpartitionView;
import org.apache.flink.runtime.io.network.partition.consumer.InputChannel.BufferAndAvailability;
import org.apache.flink.runtime.io.network.partition.consumer.InputChannelID;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.ObjectOutputStream;
import java.nio.ByteBuffer;
import java.util.Optional;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Serves one subpartition view (or index set) to one consumer through the arena, with
 * Flink 2.3's credit rules: only data buffers consume a credit, events do not; the backlog
 * is announced when the initial credit is 0 and no credit is left; resume-consumption resets
 * the credit to 0 when the initial credit is 0. Everything but the two listener callbacks
 * runs on the producer dispatcher under {@link #lock}; the listener callbacks either
 * publish the next buffer themselves under that lock (when they get it, the reader is idle
 * and has credit: {@link #writeDirect}) or queue the reader for the dispatcher.
 */
final class ShmViewReader implements NetworkSequenceViewReader, BufferAvailabilityListener {
    private static final Logger LOG = LoggerFactory.getLogger(ShmViewReader.class);

    enum Outcome {
        NONE,
        MORE,
        RELEASED,
        /** A direct publication left a large buffer to the dispatcher. */
        HANDOFF
    }

    final ShmTransport t;
    final long channel;
    final int channelId;
    /**
     * Guards the serving state (credit, registration, closed) and makes taking a buffer
     * from the view and publishing it one step, so buffers reach the ring in sequence
     * order whichever thread publishes them. Held by the dispatcher while it serves this
     * reader; only tried by other threads.
     */
    final ReentrantLock lock = new ReentrantLock();
    private final Object requestLock = new Object();
    private final AtomicBoolean notifyPending = new AtomicBoolean();
    private volatile ResultSubpartitionView view;
    private volatile PartitionRequestListener listener;
    private InputChannelID receiverId;
    private ResultPartitionID partitionId;
    /** The one subpartition of a one-element index set (-1: ask the view, as Netty does). */
    private volatile int subpartitionId = -1;
    private int initialCredit;
    private int numCreditsAvailable;
    private boolean registeredAsAvailable;
    private boolean closed;
    /** A direct publication failed or found the view released; the dispatcher releases it. */
    private boolean failed;
    /**
     * A buffer a direct publication took from the view and left to the dispatcher (larger
     * than shmflow.producer.direct-max-bytes: a full buffer is copied off the task thread,
     * which goes on writing records meanwhile). Sent before the view's next buffer.
     */
    private BufferAndAvailability stashed;
    private int stashedSubpartition;

    ShmViewReader(ShmTransport t, long channel, int channelId) {
        this.t = t;
        this.channel = channel;
        this.channelId = channelId;
    }

    /** Closed, or failed on a direct publication and waiting for the dispatcher to release it. */
    boolean isClosed() {
        return closed || failed;
    }

    boolean hasView() {
        return view != null;
    }

    /** Holds a buffer taken from the view for the dispatcher to send (under {@link #lock}). */
    boolean hasStash() {
        return stashed != null;
    }

    void clearNotified() {
        notifyPending.set(false);
    }

    // ------------------------------------------------------------ messages from the consumer

    void onMessage(int[] m, int o) {
        int kind = m[o];
        int seg = m[o + 1];
        int size = m[o + 2];
        long arg = (m[o + 8] & 0xffffffffL) | ((long) m[o + 9] << 32);
        try {
            switch (kind) {
                case Native.KIND_REQUEST:
                    onRequest(payload(seg, size), (int) arg);
                    break;
                case Native.KIND_CREDIT:
                    addCredit((int) arg);
                    t.enqueueAvailableReader(this);
                    break;
                case Native.KIND_RESUME:
                    resumeConsumption();
                    t.enqueueAvailableReader(this);
                    break;
                case Native.KIND_ACK_ALL:
                    acknowledgeAllRecordsProcessed();
                    break;
                case Native.KIND_BUFFER_SIZE:
                    notifyNewBufferSize((int) arg);
                    break;
                case Native.KIND_SEGMENT_ID:
                    notifyRequiredSegmentId(m[o + 3], (int) arg);
                    break;
                case Native.KIND_TASK_EVENT:
                    onTaskEvent(payload(seg, size));
                    break;
                case Native.KIND_CANCEL:
                    t.releaseReader(this);
                    break;
                default:
                    if (seg >= 0) {
                        Native.release(channel, seg);
                    }
                    throw new IOException("shmflow: unknown message kind " + kind);
            }
        } catch (PartitionNotFoundException e) {
            sendError(e, true);
        } catch (Throwable e) {
            LOG.warn("shmflow: channel {}: {}", channelId, e.toString());
            sendError(e, false);
            t.releaseReader(this);
        }
    }

    private byte[] payload(int seg, int size) throws IOException {
        if (seg < 0) {
            throw new IOException("shmflow: message without its payload");
        }
        byte[] b = t.readSegment(seg, size);
        Native.release(channel, seg);
        return b;
    }

    private void onRequest(byte[] p, int credit) throws IOException {
        DataInputStream in = new DataInputStream(new ByteArrayInputStream(p));
        byte[] pid = new byte[in.readInt()];
        in.readFully(pid);
        int start = in.readInt();
        int end = in.readInt();
        long upper = in.readLong();
        long lower = in.readLong();
        this.partitionId = new ResultPartitionID(pid);
        this.receiverId = new InputChannelID(lower, upper);
        this.initialCredit = credit;
        this.numCreditsAvailable = credit;
        requestSubpartitionViewOrRegisterListener(t.partitionProvider, partitionId, new ResultSubpartitionIndexSet(start, end));
    }

    private void onTaskEvent(byte[] p) throws IOException {
        DataInputStream in = new DataInputStream(new ByteArrayInputStream(p));
        byte[] pid = new byte[in.readInt()];
        in.readFully(pid);
        byte[] ev = new byte[p.length - 4 - pid.length];
        in.readFully(ev);
        TaskEvent event = (TaskEvent) EventSerializer.fromSerializedEvent(ByteBuffer.wrap(ev), getClass().getClassLoader());
        if (!t.taskEventPublisher.publish(new ResultPartitionID(pid), event)) {
            sendError(new IllegalArgumentException("Task event receiver not found."), false);
        }
    }

    // ------------------------------------------------------------ writing to the consumer

    /** Writes the next buffer of the view (one copy into the arena). */
    Outcome writeNextBuffer() throws IOException {
        return writeNextBuffer(-1, false);
    }

    /**
     * Writes the next buffer of the view into segment {@code given} (already acquired by
     * this end, or -1: acquire one, waiting up to the timeout). A segment that ends up
     * unused is released, exactly once, whatever happens. {@code direct} (a task thread,
     * which must not block: it may hold Flink's locks, and the dispatcher waits for
     * {@link #lock}): a buffer larger than shmflow.producer.direct-max-bytes, or one the
     * data ring has no room for now, is kept for the dispatcher ({@link #stashed}, sent
     * before anything else of this view, so sequence numbers stay in order) and HANDOFF
     * returned; so is a released view (the dispatcher reports its failure).
     *
     * <p>The ring can be full: it holds 64 messages (ffi's arena_config: 256 ring slots, 4
     * per message), while a channel's
     * credit (buffers-per-channel plus floating buffers of its gate) is configurable
     * without that bound, and events (barriers, end of partition, priority events) and
     * backlog announcements take no credit. It fills when the consumer's dispatcher lags.
     */
    private Outcome writeNextBuffer(int given, boolean direct) throws IOException {
        int held = given;
        try {
            int subpartition;
            BufferAndAvailability next;
            // A stashed buffer's "more available" is from when it was taken: notifications
            // since then found the reader registered, so ask the view again after it (with
            // the credit left now; credit that arrives later enqueues the reader as usual).
            boolean fromStash = stashed != null;
            if (fromStash) {
                next = stashed;
                subpartition = stashedSubpartition;
                stashed = null;
            } else {
                subpartition = peekNextBufferSubpartitionId();
                next = getNextBuffer();
            }
            if (next != null && direct && next.buffer().readableBytes() > t.directMaxBytes) {
                // Taken from the view (its credit spent): the dispatcher sends it next.
                stashed = next;
                stashedSubpartition = subpartition;
                return Outcome.HANDOFF;
            }
            if (next == null) {
                if (direct) {
                    // Nothing taken: the dispatcher looks again (and sends any error).
                    return Outcome.HANDOFF;
                }
                if (isReleased()) {
                    Throwable cause = getFailureCause();
                    if (cause != null) {
                        sendError(new ProducerFailedException(cause), false);
                    }
                    return Outcome.RELEASED;
                }
                return Outcome.NONE;
            }
            Buffer b = next.buffer();
            boolean keep = false;
            try {
                if (b instanceof FullyFilledBuffer) {
                    throw new IOException("shmflow: hybrid shuffle's partial buffers are not supported; use Netty");
                }
                int size = b.readableBytes();
                int seg = -1;
                if (size > 0) {
                    if (held < 0) {
                        held = Native.acquire(channel, t.timeoutMs);
                        if (held < 0) {
                            throw Native.error("acquiring a segment", held);
                        }
                    }
                    seg = held;
                    t.copyIntoSegment(b, seg, size);
                }
                int rc = Native.send(
                        channel,
                        Native.KIND_BUFFER,
                        seg,
                        size,
                        subpartition,
                        next.getSequenceNumber(),
                        next.buffersInBacklog(),
                        b.getDataType().ordinal(),
                        (b.isCompressed() ? Native.FLAG_COMPRESSED : 0) | (b.isBuffer() ? Native.FLAG_POLLABLE : 0),
                        0L,
                        direct ? 0 : t.timeoutMs);
                if (rc == Native.EAGAIN && direct) {
                    // The ring is full: the dispatcher sends this buffer (copying it again
                    // into a segment it acquires), waiting for room as usual.
                    stashed = next;
                    stashedSubpartition = subpartition;
                    keep = true;
                    t.metrics.directRingFull();
                    return Outcome.HANDOFF;
                }
                if (rc < 0) {
                    IOException e = Native.error("sending a buffer", rc);
                    if (rc == Native.EPEER) {
                        return Outcome.RELEASED;
                    }
                    throw e;
                }
                if (seg >= 0) {
                    if (Diag.ON) {
                        Diag.hop(direct ? Diag.P_DIRECT : Diag.P_DISPATCHER, t, seg * t.segmentSize, size);
                    }
                    held = -1; // the consumer's now
                }
                t.metrics.sent(size);
            } finally {
                if (!keep) {
                    b.recycleBuffer();
                }
            }
            if (fromStash) {
                // Credit rules as in enqueueing: data only with credit, events always.
                return getAvailabilityAndBacklog().isAvailable() ? Outcome.MORE : Outcome.NONE;
            }
            return next.moreAvailable() ? Outcome.MORE : Outcome.NONE;
        } finally {
            if (held >= 0) {
                Native.release(channel, held);
            }
        }
    }

    void announceBacklog(int backlog) {
        int rc = Native.send(channel, Native.KIND_BACKLOG, -1, 0, 0, 0, 0, 0, 0, backlog, t.timeoutMs);
        if (rc < 0 && rc != Native.EPEER) {
            LOG.warn("shmflow: announcing the backlog on channel {} failed: {}", channelId, Native.lastError());
        }
    }

    /** Sends {@code e} to the consumer (Netty's ErrorResponse). */
    void sendError(Throwable e, boolean notFound) {
        if (closed) {
            return;
        }
        try {
            byte[] b = serialize(e);
            if (b.length > t.segmentSize) {
                b = serialize(new IOException(e.toString()));
            }
            int seg = t.writeSegment(channel, b);
            int rc = Native.send(channel, Native.KIND_ERROR, seg, b.length, 0, 0, 0, 0, 0, notFound ? 1 : 0, t.timeoutMs);
            if (rc < 0) {
                Native.release(channel, seg);
            }
        } catch (IOException x) {
            LOG.warn("shmflow: could not report {} to the consumer of channel {}: {}", e, channelId, x.toString());
        }
    }

    private static byte[] serialize(Throwable e) throws IOException {
        ByteArrayOutputStream bo = new ByteArrayOutputStream();
        try (ObjectOutputStream o = new ObjectOutputStream(bo)) {
            o.writeObject(e);
        }
        return bo.toByteArray();
    }

    /** Releases the view and closes this end (producer dispatcher). */
    void close() {
        if (closed) {
            return;
        }
        closed = true;
        if (stashed != null) {
            stashed.buffer().recycleBuffer();
            stashed = null;
        }
        try {
            releaseAllResources();
        } catch (IOException e) {
            LOG.warn("shmflow: releasing the view of channel {} failed", channelId, e);
        }
        Native.closeChannel(channel);
    }

    // ------------------------------------------------------------ NetworkSequenceViewReader

    @Override
    public void requestSubpartitionViewOrRegisterListener(
            ResultPartitionProvider provider, ResultPartitionID id, ResultSubpartitionIndexSet indexSet)
            throws IOException {
        ResultSubpartitionView v;
        synchronized (requestLock) {
            if (view != null || listener != null) {
                throw new IllegalStateException("Subpartitions already requested");
            }
            listener = new NettyPartitionRequestListener(provider, this, indexSet, id);
            Optional<ResultSubpartitionView> o = provider.createSubpartitionViewOrRegisterListener(id, indexSet, this, listener);
            if (!o.isPresent()) {
                return;
            }
            v = o.get();
            view = v;
            rememberSingle(indexSet);
        }
        notifyDataAvailable(v);
    }

    @Override
    public void notifySubpartitionsCreated(ResultPartition partition, ResultSubpartitionIndexSet indexSet) throws IOException {
        ResultSubpartitionView v;
        synchronized (requestLock) {
            if (view != null) {
                throw new IllegalStateException("Subpartitions already requested");
            }
            v = partition.createSubpartitionView(indexSet, this);
            view = v;
            rememberSingle(indexSet);
        }
        notifyDataAvailable(v);
    }

    private void rememberSingle(ResultSubpartitionIndexSet indexSet) {
        if (indexSet.size() == 1) {
            subpartitionId = indexSet.values().iterator().next();
        }
    }

    @Override
    public int peekNextBufferSubpartitionId() throws IOException {
        int id = subpartitionId;
        return id >= 0 ? id : view.peekNextBufferSubpartitionId();
    }

    @Override
    public BufferAndAvailability getNextBuffer() throws IOException {
        org.apache.flink.runtime.io.network.partition.ResultSubpartition.BufferAndBacklog next = view.getNextBuffer();
        if (next == null) {
            return null;
        }
        if (next.buffer().isBuffer() && --numCreditsAvailable < 0) {
            throw new IllegalStateException("no credit available");
        }
        if (numCreditsAvailable == 0) {
            takeBankedCredit();
        }
        Buffer.DataType nextType = next.getNextDataType();
        if (!(numCreditsAvailable > 0 || nextType.isEvent())) {
            nextType = Buffer.DataType.NONE;
        }
        return new BufferAndAvailability(next.buffer(), nextType, next.buffersInBacklog(), next.getSequenceNumber());
    }

    @Override
    public boolean needAnnounceBacklog() {
        return initialCredit == 0 && numCreditsAvailable == 0;
    }

    @Override
    public void addCredit(int creditDeltas) {
        numCreditsAvailable += creditDeltas;
    }

    @Override
    public void notifyRequiredSegmentId(int subpartitionId, int segmentId) {
        ResultSubpartitionView v = view;
        if (v != null) {
            v.notifyRequiredSegmentId(subpartitionId, segmentId);
        }
    }

    @Override
    public void resumeConsumption() {
        if (initialCredit == 0) {
            numCreditsAvailable = 0;
        }
        ResultSubpartitionView v = view;
        if (v != null) {
            v.resumeConsumption();
        }
    }

    @Override
    public void acknowledgeAllRecordsProcessed() {
        ResultSubpartitionView v = view;
        if (v != null) {
            v.acknowledgeAllDataProcessed();
        }
    }

    @Override
    public ResultSubpartitionView.AvailabilityWithBacklog getAvailabilityAndBacklog() {
        if (numCreditsAvailable <= 0) {
            takeBankedCredit();
        }
        return view.getAvailabilityAndBacklog(numCreditsAvailable > 0);
    }

    /**
     * Our credit is used up: takes what the consumer banked (shmflow.consumer.banked-credit;
     * only channels with positive initial credit bank). Finding nothing asks the consumer's
     * next bank to wake the dispatcher with this channel marked ({@link ShmTransport}'s
     * incoming enqueues the reader then). An error (the channel closing) is left to the
     * dispatcher's poll, which reports it.
     */
    private void takeBankedCredit() {
        if (initialCredit <= 0) {
            return;
        }
        int n = Native.takeCredit(channel);
        if (n > 0) {
            numCreditsAvailable += n;
            t.metrics.creditTaken();
        }
    }

    @Override
    public boolean isRegisteredAsAvailable() {
        return registeredAsAvailable;
    }

    @Override
    public void setRegisteredAsAvailable(boolean isRegisteredAvailable) {
        this.registeredAsAvailable = isRegisteredAvailable;
    }

    @Override
    public boolean isReleased() {
        ResultSubpartitionView v = view;
        return v != null && v.isReleased();
    }

    @Override
    public void releaseAllResources() throws IOException {
        PartitionRequestListener l = listener;
        if (l != null) {
            t.partitionProvider.releasePartitionRequestListener(l);
        }
        ResultSubpartitionView v = view;
        if (v != null) {
            v.releaseAllResources();
        }
    }

    @Override
    public Throwable getFailureCause() {
        ResultSubpartitionView v = view;
        return v == null ? null : v.getFailureCause();
    }

    @Override
    public InputChannelID getReceiverId() {
        return receiverId;
    }

    @Override
    public void notifyNewBufferSize(int newBufferSize) {
        ResultSubpartitionView v = view;
        if (v != null) {
            v.notifyNewBufferSize(newBufferSize);
        }
    }

    @Override
    public void notifyPartitionRequestTimeout(PartitionRequestListener l) {
        t.runOnProducer(() -> {
            lock.lock();
            try {
                sendError(new PartitionNotFoundException(l.getResultPartitionId()), true);
                t.releaseReader(this);
            } finally {
                lock.unlock();
            }
        });
    }

    // ------------------------------------------------------------ BufferAvailabilityListener

    @Override
    public void notifyDataAvailable(ResultSubpartitionView v) {
        if (t.direct && writeDirect()) {
            return;
        }
        if (notifyPending.compareAndSet(false, true)) {
            t.notifyReaderNonEmpty(this);
        }
    }

    /**
     * The calling thread (the task that made a buffer available, or Flink's output flusher)
     * publishes the next buffer itself, without waking the dispatcher, when the buffer is at
     * most shmflow.producer.direct-max-bytes (8 KiB by default: flushed buffers) and it gets
     * {@link #lock} at once, the reader is idle (neither queued for the dispatcher nor
     * registered as available), the view has a buffer the credit allows and a segment is
     * free now. True when that buffer was the last one available (nothing left for the
     * dispatcher); false leaves the reader to the dispatcher, as without this path: no
     * credit (the dispatcher announces the backlog), more buffers, or any obstacle.
     */
    private boolean writeDirect() {
        if (!lock.tryLock()) {
            Diag.directRefused(Diag.D_LOCKED);
            return false;
        }
        try {
            if (closed || failed || view == null || registeredAsAvailable || notifyPending.get() || stashed != null) {
                Diag.directRefused(registeredAsAvailable ? Diag.D_REGISTERED : notifyPending.get() ? Diag.D_NOTIFIED : Diag.D_OTHER);
                return false;
            }
            int seg;
            try {
                if (!getAvailabilityAndBacklog().isAvailable()) {
                    Diag.directRefused(Diag.D_NO_CREDIT);
                    return false;
                }
                seg = Native.acquire(channel, 0);
            } catch (RuntimeException e) {
                // Nothing taken yet: the dispatcher tries again and reports it its way.
                return false;
            }
            if (seg < 0) {
                Diag.directRefused(Diag.D_OTHER);
                return false;
            }
            Outcome o;
            try {
                o = writeNextBuffer(seg, true);
            } catch (Throwable e) {
                // As the dispatcher's writeNext does, but the error is sent (sending may
                // wait for ring room) and the reader released there.
                LOG.warn("shmflow: serving channel {} failed", channelId, e);
                failed = true;
                t.runOnProducer(() -> {
                    lock.lock();
                    try {
                        sendError(e, false);
                    } finally {
                        lock.unlock();
                    }
                    t.releaseReader(this);
                });
                return true;
            }
            if (o == Outcome.RELEASED) {
                failed = true;
                t.runOnProducer(() -> t.releaseReader(this));
                return true;
            }
            if (o == Outcome.HANDOFF) {
                Diag.directRefused(Diag.D_HANDOFF);
                return false;
            }
            t.metrics.direct();
            return o == Outcome.NONE;
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void notifyPriorityEvent(int prioritySequenceNumber) {
        notifyDataAvailable(view);
    }
}
