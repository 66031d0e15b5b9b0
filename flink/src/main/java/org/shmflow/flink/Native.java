/*
 * The JNI entry points of libshmflow_ffi (ffi/src/jni_api.rs). Every method returns 0 or
 * a non-negative value on success and a negative code on failure; lastError() explains it.
 */
package org.shmflow.flink;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/** Native calls of the shared-memory transport; see ffi/include/shmflow.h for the contract. */
final class Native {
    /** Side of a TaskManager's notify set: the channels it consumes. */
    static final int CONSUMER = 0;
    /** Side of a TaskManager's notify set: the channels it produces. */
    static final int PRODUCER = 1;

    static final int EAGAIN = -2;
    static final int EPEER = -3;
    static final int ENOENT = -7;

    // Message kinds. 1 is the transport's credit announcement (Native.addCredit).
    static final int KIND_CREDIT = 1;
    /** Consumer to producer: partition request (segment: ResultPartitionID, index set, channel id, initial credit). */
    static final int KIND_REQUEST = 2;
    static final int KIND_RESUME = 3;
    static final int KIND_ACK_ALL = 4;
    /** arg = new buffer size. */
    static final int KIND_BUFFER_SIZE = 5;
    /** subpartition = subpartition id, arg = segment id. */
    static final int KIND_SEGMENT_ID = 6;
    /** segment: ResultPartitionID + serialized TaskEvent. */
    static final int KIND_TASK_EVENT = 7;
    static final int KIND_CANCEL = 8;
    /** Producer to consumer: a buffer or event (Flink's BufferResponse). */
    static final int KIND_BUFFER = 16;
    /** arg = backlog (Flink's BacklogAnnouncement). */
    static final int KIND_BACKLOG = 17;
    /** segment: a serialized Throwable; arg = 1 for PartitionNotFoundException. */
    static final int KIND_ERROR = 18;

    /** Message flag: the payload is compressed. */
    static final int FLAG_COMPRESSED = 1;
    /** Message flag (producer, data buffers): the consumer's task may poll it (not carried). */
    static final int FLAG_POLLABLE = 2;

    /** Ints per message in poll's array. */
    static final int MSG_INTS = 10;

    private static volatile Throwable loadError;
    private static volatile boolean loaded;

    private Native() {}

    /**
     * Loads libshmflow_ffi once: from {@code path} if given, else from the copy packed in
     * this jar (native/libshmflow_ffi.so), else from java.library.path.
     */
    static synchronized void load(String path) throws IOException {
        if (loaded) {
            return;
        }
        if (loadError != null) {
            throw new IOException("libshmflow_ffi failed to load before", loadError);
        }
        try {
            if (path != null && !path.isEmpty()) {
                System.load(new File(path).getAbsolutePath());
            } else {
                InputStream in = Native.class.getResourceAsStream("/native/libshmflow_ffi.so");
                if (in != null) {
                    Path tmp = Files.createTempFile("libshmflow_ffi", ".so");
                    try (InputStream s = in) {
                        Files.copy(s, tmp, StandardCopyOption.REPLACE_EXISTING);
                    }
                    tmp.toFile().deleteOnExit();
                    System.load(tmp.toAbsolutePath().toString());
                    Files.deleteIfExists(tmp); // mapped now; a SIGKILLed JVM never runs deleteOnExit
                } else {
                    System.loadLibrary("shmflow_ffi");
                }
            }
            loaded = true;
        } catch (UnsatisfiedLinkError | IOException | SecurityException e) {
            loadError = e;
            throw new IOException("cannot load libshmflow_ffi: " + e.getMessage(), e);
        }
    }

    /** An IOException for return code {@code rc} with the native message. */
    static IOException error(String what, int rc) {
        String msg = lastError();
        IOException e = new IOException("shmflow: " + what + " failed (code " + rc + "): " + msg);
        return e;
    }

    static native int open(String name, String registryDir, String tmId, long arenaBytes, int segmentSize, long spinNs, long[] out);

    static native int close(long arena);

    /** out: slot, segment size, segment count, free segments, data length. */
    static native int info(long arena, long[] out);

    static native ByteBuffer data(long arena);

    /**
     * The peer handle of a live TaskManager (its worker slot in the low 32 bits, the slot's
     * generation in the high 32; never negative), or a negative code. Keep the handle, not
     * the slot: a slot is registered again by another TaskManager after its holder leaves.
     */
    static native long lookup(long arena, String tmId);

    /** 2 alive, 1 left cleanly, 0 died, 3 free or another TaskManager's now. */
    static native int peerState(long arena, long peer);

    static native int await(long arena, int side, int[] ids, int timeoutMs);

    static native int wake(long arena, int side);

    /** Spin budget of side's await before it parks (0..1e9 ns). */
    static native int setSpin(long arena, int side, long spinNs);

    /** out: channel handle, channel id. producerPeer: a handle from {@link #lookup}. */
    static native int connect(long arena, long producerPeer, long[] out);

    static native int accept(long arena, int id, long[] out);

    static native int closeChannel(long channel);

    /** 0 open, 1 the other end closed, 2 it died. */
    static native int status(long channel);

    /** out: buffers out, bytes out, buffers in, bytes in. */
    static native int counters(long channel, long[] out);

    static native int acquire(long channel, int timeoutMs);

    static native int release(long channel, int segment);

    static native int send(
            long channel,
            int kind,
            int segment,
            int size,
            int subpartition,
            int seq,
            int backlog,
            int dataType,
            int flags,
            long arg,
            int timeoutMs);

    static native int poll(long channel, int[] out);

    static native int addCredit(long channel, int n, int timeoutMs);

    /** Consumer: banks n credits (no message; wakes the producer only if it asked). */
    static native int bankCredit(long channel, int n);

    /** Consumer: on = 1 while this end's task polls the ring itself; 0 stops (poll once more after). */
    static native int taskPolls(long channel, int on);

    /** Producer: the banked credit taken (>= 0; 0 also asks the next bank to wake us), or an error. */
    static native int takeCredit(long channel);

    /** Online reclamation of dead TaskManagers; out: processes, segments freed, orphaned, channels failed. */
    static native int reclaim(long arena, long[] out);

    static native String lastError();
}
