package io.lockd.example;

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.lockd.v1.AcquireRequest;
import io.lockd.v1.GetLockRequest;
import io.lockd.v1.Lease;
import io.lockd.v1.LockMode;
import io.lockd.v1.LockServiceGrpc;
import io.lockd.v1.LockServiceGrpc.LockServiceBlockingStub;
import io.lockd.v1.Queued;
import io.lockd.v1.ReleaseRequest;
import io.lockd.v1.RenewRequest;
import io.lockd.v1.WaitEvent;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * The pattern for using a lockd lock from Java, with stubs generated from
 * proto/lockd/v1/lock.proto.
 *
 * <p>Two workers update one record in a tiny in-process "storage". Each waits in line with
 * WaitQueue (retrying UNAVAILABLE with backoff within its deadline), renews its lease in the
 * background every ttl/3 while it works, writes with its fencing token, and releases in a
 * {@code finally}. The storage rejects a token lower than the last one it accepted. Worker A
 * works for twice its ttl, so without the renewals B would be granted while A still writes.
 * Exits non-zero on any unexpected answer.
 *
 * <p>Usage: java io.lockd.example.LockdExample HOST:PORT
 */
public final class LockdExample {
  private static final long TTL_MS = 1500;
  private static final long RPC_TIMEOUT_MS = 5000;

  /** An answer the example did not expect. */
  static final class ExampleFailure extends RuntimeException {
    ExampleFailure(String message) {
      super(message);
    }
  }

  static void check(boolean cond, String message) {
    if (!cond) {
      throw new ExampleFailure(message);
    }
  }

  /** A write with a fencing token lower than one already accepted. */
  static final class StaleToken extends RuntimeException {
    StaleToken(String message) {
      super(message);
    }
  }

  /**
   * Stands for the resource the lock protects: it accepts a write only with a fencing token at
   * least as large as the last one it accepted.
   */
  static final class Storage {
    private long lastToken;
    private String value;

    synchronized void write(long token, String v) {
      if (Long.compareUnsigned(token, lastToken) < 0) {
        throw new StaleToken("token " + Long.toUnsignedString(token)
            + " < last accepted " + Long.toUnsignedString(lastToken));
      }
      lastToken = token;
      value = v;
    }

    synchronized String value() {
      return value;
    }
  }

  /**
   * Waits in line for a lease until {@code deadlineNanos} (System.nanoTime()), retrying
   * UNAVAILABLE (a Redis blip, a daemon restart) with exponential backoff and jitter.
   */
  static Lease acquire(ManagedChannel channel, AcquireRequest req, long deadlineNanos,
      Consumer<Queued> onQueued) throws InterruptedException {
    long backoffMs = 100;
    while (true) {
      long leftMs = TimeUnit.NANOSECONDS.toMillis(deadlineNanos - System.nanoTime());
      check(leftMs > 0, req.getClientId() + " not granted before the deadline");
      try {
        Iterator<WaitEvent> events = LockServiceGrpc.newBlockingStub(channel)
            .withDeadlineAfter(leftMs + RPC_TIMEOUT_MS, TimeUnit.MILLISECONDS)
            .waitQueue(req.toBuilder().setWaitTimeoutMs(leftMs).build());
        while (events.hasNext()) {
          WaitEvent event = events.next();
          if (event.hasQueued()) {
            onQueued.accept(event.getQueued());
          } else if (event.hasGranted()) {
            return event.getGranted().getLease();
          }
        }
        throw new ExampleFailure("WaitQueue ended without Granted");
      } catch (StatusRuntimeException e) {
        if (e.getStatus().getCode() != Status.Code.UNAVAILABLE) {
          throw e;
        }
        System.out.println("   " + req.getClientId() + ": UNAVAILABLE, retrying in " + backoffMs + " ms");
        Thread.sleep(ThreadLocalRandom.current().nextLong(backoffMs / 2, backoffMs + 1));
        backoffMs = Math.min(backoffMs * 2, 2000);
      }
    }
  }

  /** The work done while holding a lease; {@code lost} counts down if the lease is lost. */
  interface Work {
    void run(Lease lease, CountDownLatch lost) throws Exception;
  }

  /**
   * Holds a lease while work runs: renewed every ttl/3, released however work ends. The lease
   * counts as lost on NOT_FOUND and the like, or when no renewal succeeded for a whole ttl.
   */
  static void withLock(ManagedChannel channel, AcquireRequest req, long deadlineNanos,
      Consumer<Queued> onQueued, Work work) throws Exception {
    Lease lease = acquire(channel, req, deadlineNanos, onQueued);
    CountDownLatch lost = new CountDownLatch(1);
    ScheduledExecutorService renewer = Executors.newSingleThreadScheduledExecutor();
    long[] validUntil = {System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(TTL_MS)};
    renewer.scheduleAtFixedRate(() -> {
      long sent = System.nanoTime();
      try {
        LockServiceGrpc.newBlockingStub(channel)
            .withDeadlineAfter(TTL_MS / 3, TimeUnit.MILLISECONDS)
            .renew(RenewRequest.newBuilder()
                .setLockId(lease.getLockId()).setClientId(lease.getClientId()).build());
        validUntil[0] = sent + TimeUnit.MILLISECONDS.toNanos(TTL_MS);
      } catch (StatusRuntimeException e) {
        Status.Code code = e.getStatus().getCode();
        boolean retryable = code == Status.Code.UNAVAILABLE || code == Status.Code.DEADLINE_EXCEEDED;
        if (!retryable || System.nanoTime() - validUntil[0] > 0) {
          System.out.println("   " + lease.getClientId() + ": lease lost: " + e.getStatus());
          lost.countDown();
          renewer.shutdown();
        }
      }
    }, TTL_MS / 3, TTL_MS / 3, TimeUnit.MILLISECONDS);
    try {
      work.run(lease, lost);
    } finally {
      renewer.shutdown(); // a renewal under way finishes, no new one starts
      renewer.awaitTermination(RPC_TIMEOUT_MS, TimeUnit.MILLISECONDS);
      try {
        stub(channel).release(ReleaseRequest.newBuilder()
            .setLockId(lease.getLockId()).setClientId(lease.getClientId()).build());
      } catch (StatusRuntimeException e) {
        // NOT_FOUND: it expired already. Otherwise the ttl ends it anyway.
        System.out.println("   release " + lease.getLockId() + ": " + e.getStatus());
      }
    }
  }

  static LockServiceBlockingStub stub(ManagedChannel channel) {
    return LockServiceGrpc.newBlockingStub(channel)
        .withDeadlineAfter(RPC_TIMEOUT_MS, TimeUnit.MILLISECONDS);
  }

  static long deadlineIn(long seconds) {
    return System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
  }

  static void run(String addr) throws Exception {
    byte[] b = new byte[6];
    new SecureRandom().nextBytes(b);
    StringBuilder suffix = new StringBuilder();
    for (byte x : b) {
      suffix.append(String.format("%02x", x));
    }
    String resource = "examples/java/" + suffix;
    AcquireRequest base = AcquireRequest.newBuilder()
        .setResource(resource).setMode(LockMode.LOCK_MODE_EXCLUSIVE).setTtlMs(TTL_MS).build();
    AcquireRequest reqA = base.toBuilder().setClientId("example-java-a-" + suffix).build();
    AcquireRequest reqB = base.toBuilder().setClientId("example-java-b-" + suffix).build();

    // Two channels: A and B stand for two separate processes.
    ManagedChannel chanA = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
    ManagedChannel chanB = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
    Storage storage = new Storage();
    Lease[] leases = new Lease[2];
    CountDownLatch aHolds = new CountDownLatch(1);
    ExecutorService workers = Executors.newFixedThreadPool(2);
    try {
      System.out.println("connecting to " + addr + "; resource \"" + resource + "\"");
      Future<?> a = workers.submit(() -> {
        try {
          withLock(chanA, reqA, deadlineIn(10), q -> { }, (lease, lost) -> {
            leases[0] = lease;
            System.out.println("1. A granted, fencing token " + lease.getFencingToken());
            storage.write(lease.getFencingToken(), "A started");
            aHolds.countDown();
            // Work for two ttls: only the renewals keep B out meanwhile.
            check(!lost.await(2 * TTL_MS, TimeUnit.MILLISECONDS), "A lost its lease while working");
            storage.write(lease.getFencingToken(), "A done");
            System.out.println("3. A worked for 2 x ttl and wrote again: the renewals kept its lease");
          });
        } finally {
          aHolds.countDown();
        }
        return null;
      });
      aHolds.await(10, TimeUnit.SECONDS);
      List<Long> positions = new ArrayList<>();
      Consumer<Queued> onQueued = q -> {
        positions.add(q.getPosition());
        System.out.println("2. B queued: position=" + q.getPosition()
            + " queue_length=" + q.getQueueLength());
      };
      Future<?> bDone = workers.submit(() -> {
        withLock(chanB, reqB, deadlineIn(10), onQueued, (lease, lost) -> {
          leases[1] = lease;
          System.out.println("4. B granted, fencing token " + lease.getFencingToken());
          check(!positions.isEmpty() && positions.get(0) == 0,
              "B expected to be told position 0 first, got " + positions);
          check("A done".equals(storage.value()),
              "B was granted before A finished: storage has " + storage.value());
          storage.write(lease.getFencingToken(), "B done");
        });
        return null;
      });
      try {
        a.get();
        bDone.get();
      } catch (ExecutionException e) {
        throw e.getCause() instanceof Exception ? (Exception) e.getCause() : e;
      }

      check(Long.compareUnsigned(leases[1].getFencingToken(), leases[0].getFencingToken()) > 0,
          "B's fencing token is not larger than A's");
      try {
        storage.write(leases[0].getFencingToken(), "A, late");
        throw new ExampleFailure("storage accepted A's stale token");
      } catch (StaleToken e) {
        System.out.println("5. a late write with A's token is rejected: " + e.getMessage());
      }
      try {
        stub(chanB).getLock(GetLockRequest.newBuilder().setLockId(leases[1].getLockId()).build());
        throw new ExampleFailure("B's lock is still live after release");
      } catch (StatusRuntimeException e) {
        check(e.getStatus().getCode() == Status.Code.NOT_FOUND,
            "GetLock after release: " + e.getStatus());
        System.out.println("6. both released; GetLock on B's lock: NOT_FOUND");
      }
    } finally {
      workers.shutdownNow();
      chanA.shutdownNow();
      chanB.shutdownNow();
      chanA.awaitTermination(5, TimeUnit.SECONDS);
      chanB.awaitTermination(5, TimeUnit.SECONDS);
    }
    System.out.println("OK: java example passed");
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      System.err.println("usage: LockdExample HOST:PORT");
      System.exit(2);
    }
    try {
      run(args[0]);
    } catch (ExampleFailure | StaleToken e) {
      System.err.println("FAIL: " + e.getMessage());
      System.exit(1);
    } catch (StatusRuntimeException e) {
      System.err.println("FAIL: RPC failed: " + e.getStatus());
      System.exit(1);
    }
    System.exit(0);
  }
}
