package io.lockd.example;

import com.google.protobuf.Timestamp;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.lockd.v1.AcquireRequest;
import io.lockd.v1.GetLockRequest;
import io.lockd.v1.GetLockResponse;
import io.lockd.v1.Lease;
import io.lockd.v1.LockMode;
import io.lockd.v1.LockServiceGrpc;
import io.lockd.v1.LockServiceGrpc.LockServiceBlockingStub;
import io.lockd.v1.Queued;
import io.lockd.v1.ReleaseRequest;
import io.lockd.v1.RenewRequest;
import io.lockd.v1.WaitEvent;
import java.security.SecureRandom;
import java.time.Duration;
import java.time.Instant;
import java.util.Iterator;
import java.util.concurrent.TimeUnit;

/**
 * Runs one small scenario against a lockd daemon with stubs generated from
 * proto/lockd/v1/lock.proto: client A holds a lock, client B waits for it in line,
 * is granted it with a larger fencing token, renews it and releases it. Exits
 * non-zero on any unexpected answer.
 *
 * <p>Usage: java io.lockd.example.LockdExample HOST:PORT
 */
public final class LockdExample {
  private static final long RPC_TIMEOUT_MS = 5000;

  /** An answer the scenario did not expect. */
  private static final class ExampleFailure extends RuntimeException {
    ExampleFailure(String message) {
      super(message);
    }
  }

  private static void check(boolean cond, String message) {
    if (!cond) {
      throw new ExampleFailure(message);
    }
  }

  private static Instant instant(Timestamp t) {
    return Instant.ofEpochSecond(t.getSeconds(), t.getNanos());
  }

  private static String describe(Lease l) {
    return "lock_id=" + l.getLockId()
        + " fencing_token=" + Long.toUnsignedString(l.getFencingToken())
        + " mode=" + l.getMode()
        + " client_id=" + l.getClientId()
        + " expires_at=" + instant(l.getExpiresAt())
        + " renewal_count=" + Integer.toUnsignedString(l.getRenewalCount());
  }

  private static LockServiceBlockingStub stub(ManagedChannel channel) {
    return LockServiceGrpc.newBlockingStub(channel)
        .withDeadlineAfter(RPC_TIMEOUT_MS, TimeUnit.MILLISECONDS);
  }

  private static String randomSuffix() {
    byte[] b = new byte[6];
    new SecureRandom().nextBytes(b);
    StringBuilder sb = new StringBuilder();
    for (byte x : b) {
      sb.append(String.format("%02x", x));
    }
    return sb.toString();
  }

  private static void run(String addr) throws InterruptedException {
    String suffix = randomSuffix();
    String resource = "examples/java/" + suffix;
    String clientA = "example-java-a-" + suffix;
    String clientB = "example-java-b-" + suffix;

    // Two channels: A and B stand for two separate processes.
    ManagedChannel chanA = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
    ManagedChannel chanB = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
    try {
      System.out.println("connecting to " + addr + "; resource \"" + resource + "\"");

      // 1. A acquires R exclusively; nobody holds it, so it must not wait.
      Lease leaseA = stub(chanA).acquire(AcquireRequest.newBuilder()
          .setResource(resource)
          .setMode(LockMode.LOCK_MODE_EXCLUSIVE)
          .setTtlMs(10000)
          .setWaitTimeoutMs(0)
          .setClientId(clientA)
          .build()).getLease();
      check(!leaseA.getLockId().isEmpty() && leaseA.getResource().equals(resource)
          && leaseA.getClientId().equals(clientA),
          "A Acquire returned an unexpected lease: " + leaseA);
      System.out.println("1. A acquired: " + describe(leaseA));

      // 2. B waits in line for R and must be told it is next, alone in the queue.
      Iterator<WaitEvent> stream = LockServiceGrpc.newBlockingStub(chanB)
          .withDeadlineAfter(15, TimeUnit.SECONDS)
          .waitQueue(AcquireRequest.newBuilder()
              .setResource(resource)
              .setMode(LockMode.LOCK_MODE_EXCLUSIVE)
              .setTtlMs(10000)
              .setWaitTimeoutMs(10000)
              .setClientId(clientB)
              .build());
      check(stream.hasNext(), "WaitQueue ended without any event");
      WaitEvent event = stream.next();
      check(event.getEventCase() == WaitEvent.EventCase.QUEUED,
          "first WaitQueue event is not Queued: " + event);
      Queued queued = event.getQueued();
      System.out.println("2. B queued: position=" + queued.getPosition()
          + " queue_length=" + queued.getQueueLength());
      check(queued.getPosition() == 0 && queued.getQueueLength() == 1,
          "B expected position=0 queue_length=1, got position=" + queued.getPosition()
              + " queue_length=" + queued.getQueueLength());

      // 3. A releases; B's stream must then deliver Granted and end OK.
      stub(chanA).release(ReleaseRequest.newBuilder()
          .setLockId(leaseA.getLockId()).setClientId(clientA).build());
      System.out.println("3. A released " + leaseA.getLockId());
      Lease leaseB = null;
      while (leaseB == null) {
        check(stream.hasNext(), "WaitQueue ended before Granted");
        event = stream.next();
        switch (event.getEventCase()) {
          case QUEUED:
            // Updates may repeat, but the position never goes up.
            check(Long.compareUnsigned(event.getQueued().getPosition(), queued.getPosition()) <= 0,
                "position went up from " + queued.getPosition() + " to "
                    + event.getQueued().getPosition());
            System.out.println("   B queued again: position=" + event.getQueued().getPosition()
                + " queue_length=" + event.getQueued().getQueueLength());
            break;
          case GRANTED:
            check(event.getGranted().hasLease(), "Granted without a lease");
            leaseB = event.getGranted().getLease();
            break;
          default:
            throw new ExampleFailure("unexpected WaitQueue event: " + event);
        }
      }
      System.out.println("   B granted: " + describe(leaseB));
      // hasNext() throws StatusRuntimeException unless the stream ends OK.
      check(!stream.hasNext(), "events after Granted: " + (stream.hasNext() ? stream.next() : ""));
      check(!leaseB.getLockId().isEmpty() && leaseB.getResource().equals(resource)
          && leaseB.getClientId().equals(clientB),
          "B's lease is not B's lease on " + resource + ": " + leaseB);

      // 4. Fencing tokens strictly increase per resource.
      check(Long.compareUnsigned(leaseB.getFencingToken(), leaseA.getFencingToken()) > 0,
          "B's fencing token " + Long.toUnsignedString(leaseB.getFencingToken())
              + " is not larger than A's " + Long.toUnsignedString(leaseA.getFencingToken()));
      System.out.println("4. fencing token grew: A=" + Long.toUnsignedString(leaseA.getFencingToken())
          + " < B=" + Long.toUnsignedString(leaseB.getFencingToken()));

      // 5. B renews with a longer ttl: expires_at moves forward, the count goes to 1.
      Lease renewed = stub(chanB).renew(RenewRequest.newBuilder()
          .setLockId(leaseB.getLockId()).setClientId(clientB).setTtlMs(20000).build()).getLease();
      System.out.println("5. B renewed: " + describe(renewed));
      Instant before = instant(leaseB.getExpiresAt());
      Instant after = instant(renewed.getExpiresAt());
      check(after.isAfter(before),
          "expires_at did not move forward: before=" + before + " after=" + after);
      check(renewed.getRenewalCount() == 1,
          "renewal_count = " + Integer.toUnsignedString(renewed.getRenewalCount()) + ", want 1");
      check(renewed.getFencingToken() == leaseB.getFencingToken(),
          "Renew changed the fencing token from " + leaseB.getFencingToken() + " to "
              + renewed.getFencingToken());
      System.out.println("   expires_at moved forward by " + Duration.between(before, after)
          + "; renewal_count=1");

      // 6. B releases; the lease is then unknown.
      stub(chanB).release(ReleaseRequest.newBuilder()
          .setLockId(leaseB.getLockId()).setClientId(clientB).build());
      try {
        GetLockResponse got = stub(chanB).getLock(
            GetLockRequest.newBuilder().setLockId(leaseB.getLockId()).build());
        throw new ExampleFailure("GetLock after Release: want NOT_FOUND, got lease " + got.getLease());
      } catch (StatusRuntimeException e) {
        Status s = e.getStatus();
        check(s.getCode() == Status.Code.NOT_FOUND,
            "GetLock after Release: want NOT_FOUND, got " + s.getCode() + ": " + s.getDescription());
        System.out.println("6. B released; GetLock now fails with " + s.getCode() + ": "
            + s.getDescription());
      }
    } finally {
      chanA.shutdownNow();
      chanB.shutdownNow();
      chanA.awaitTermination(5, TimeUnit.SECONDS);
      chanB.awaitTermination(5, TimeUnit.SECONDS);
    }
    System.out.println("OK: java example passed");
  }

  public static void main(String[] args) throws InterruptedException {
    if (args.length != 1) {
      System.err.println("usage: LockdExample HOST:PORT");
      System.exit(2);
    }
    try {
      run(args[0]);
    } catch (ExampleFailure e) {
      System.err.println("FAIL: " + e.getMessage());
      System.exit(1);
    } catch (StatusRuntimeException e) {
      System.err.println("FAIL: RPC failed: " + e.getStatus().getCode() + ": "
          + e.getStatus().getDescription());
      System.exit(1);
    }
  }
}
