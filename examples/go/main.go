// Command lockd-example runs one small scenario against a lockd daemon with
// stubs generated from proto/lockd/v1/lock.proto: client A holds a lock,
// client B waits for it in line, is granted it with a larger fencing token,
// renews it and releases it. It exits non-zero on any unexpected answer.
//
// Usage: lockd-example HOST:PORT
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	lockdv1 "github.com/lockd/lockd/gen/go/lockd/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const rpcTimeout = 5 * time.Second

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func step(format string, args ...interface{}) {
	fmt.Printf(format+"\n", args...)
}

func dial(addr string) *grpc.ClientConn {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	// grpc-go 1.33 (Debian's) has no credentials/insecure package.
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fail("connect to %s: %v", addr, err)
	}
	return conn
}

func randomSuffix() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		fail("random suffix: %v", err)
	}
	return hex.EncodeToString(b)
}

func leaseString(l *lockdv1.Lease) string {
	return fmt.Sprintf("lock_id=%s fencing_token=%d mode=%s client_id=%s expires_at=%s renewal_count=%d",
		l.GetLockId(), l.GetFencingToken(), l.GetMode(), l.GetClientId(),
		l.GetExpiresAt().AsTime().Format(time.RFC3339Nano), l.GetRenewalCount())
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lockd-example HOST:PORT")
		os.Exit(2)
	}
	addr := os.Args[1]
	suffix := randomSuffix()
	resource := "examples/go/" + suffix
	clientA := "example-go-a-" + suffix
	clientB := "example-go-b-" + suffix

	// Two connections: A and B stand for two separate processes.
	connA, connB := dial(addr), dial(addr)
	defer connA.Close()
	defer connB.Close()
	a := lockdv1.NewLockServiceClient(connA)
	b := lockdv1.NewLockServiceClient(connB)
	step("connected to %s; resource %q", addr, resource)

	// 1. A acquires R exclusively; nobody holds it, so it must not wait.
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	noWait := uint64(0)
	acq, err := a.Acquire(ctx, &lockdv1.AcquireRequest{
		Resource:      resource,
		Mode:          lockdv1.LockMode_LOCK_MODE_EXCLUSIVE,
		TtlMs:         10000,
		WaitTimeoutMs: &noWait,
		ClientId:      clientA,
	})
	cancel()
	if err != nil {
		fail("A Acquire: %v", err)
	}
	leaseA := acq.GetLease()
	if leaseA.GetLockId() == "" || leaseA.GetResource() != resource || leaseA.GetClientId() != clientA {
		fail("A Acquire returned an unexpected lease: %v", leaseA)
	}
	step("1. A acquired: %s", leaseString(leaseA))

	// 2. B waits in line for R and must be told it is next, alone in the queue.
	waitCtx, waitCancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer waitCancel()
	waitTimeout := uint64(10000)
	stream, err := b.WaitQueue(waitCtx, &lockdv1.AcquireRequest{
		Resource:      resource,
		Mode:          lockdv1.LockMode_LOCK_MODE_EXCLUSIVE,
		TtlMs:         10000,
		WaitTimeoutMs: &waitTimeout,
		ClientId:      clientB,
	})
	if err != nil {
		fail("B WaitQueue: %v", err)
	}
	ev, err := stream.Recv()
	if err != nil {
		fail("B WaitQueue first event: %v", err)
	}
	queued := ev.GetQueued()
	if queued == nil {
		fail("B WaitQueue: first event is not Queued: %v", ev)
	}
	step("2. B queued: position=%d queue_length=%d", queued.GetPosition(), queued.GetQueueLength())
	if queued.GetPosition() != 0 || queued.GetQueueLength() != 1 {
		fail("B expected position=0 queue_length=1, got position=%d queue_length=%d",
			queued.GetPosition(), queued.GetQueueLength())
	}

	// 3. A releases; B's stream must then deliver Granted and end OK.
	ctx, cancel = context.WithTimeout(context.Background(), rpcTimeout)
	_, err = a.Release(ctx, &lockdv1.ReleaseRequest{LockId: leaseA.GetLockId(), ClientId: clientA})
	cancel()
	if err != nil {
		fail("A Release: %v", err)
	}
	step("3. A released %s", leaseA.GetLockId())
	var leaseB *lockdv1.Lease
	for leaseB == nil {
		ev, err = stream.Recv()
		if err != nil {
			fail("B WaitQueue: stream ended before Granted: %v", err)
		}
		switch e := ev.GetEvent().(type) {
		case *lockdv1.WaitEvent_Queued:
			// Updates may repeat, but the position never goes up.
			if e.Queued.GetPosition() > queued.GetPosition() {
				fail("B WaitQueue: position went up from %d to %d", queued.GetPosition(), e.Queued.GetPosition())
			}
			step("   B queued again: position=%d queue_length=%d", e.Queued.GetPosition(), e.Queued.GetQueueLength())
		case *lockdv1.WaitEvent_Granted:
			leaseB = e.Granted.GetLease()
			if leaseB == nil {
				fail("B WaitQueue: Granted without a lease")
			}
		default:
			fail("B WaitQueue: unexpected event %v", ev)
		}
	}
	step("   B granted: %s", leaseString(leaseB))
	if ev, err = stream.Recv(); err != io.EOF {
		fail("B WaitQueue: expected the stream to end OK after Granted, got event=%v err=%v", ev, err)
	}
	if leaseB.GetLockId() == "" || leaseB.GetResource() != resource || leaseB.GetClientId() != clientB {
		fail("B's lease is not B's lease on %q: %v", resource, leaseB)
	}

	// 4. Fencing tokens strictly increase per resource.
	if leaseB.GetFencingToken() <= leaseA.GetFencingToken() {
		fail("B's fencing token %d is not larger than A's %d", leaseB.GetFencingToken(), leaseA.GetFencingToken())
	}
	step("4. fencing token grew: A=%d < B=%d", leaseA.GetFencingToken(), leaseB.GetFencingToken())

	// 5. B renews with a longer ttl: expires_at moves forward, the count goes to 1.
	ctx, cancel = context.WithTimeout(context.Background(), rpcTimeout)
	ren, err := b.Renew(ctx, &lockdv1.RenewRequest{LockId: leaseB.GetLockId(), ClientId: clientB, TtlMs: 20000})
	cancel()
	if err != nil {
		fail("B Renew: %v", err)
	}
	renewed := ren.GetLease()
	before, after := leaseB.GetExpiresAt().AsTime(), renewed.GetExpiresAt().AsTime()
	step("5. B renewed: %s", leaseString(renewed))
	if !after.After(before) {
		fail("expires_at did not move forward: before=%s after=%s", before, after)
	}
	if renewed.GetRenewalCount() != 1 {
		fail("renewal_count = %d, want 1", renewed.GetRenewalCount())
	}
	if renewed.GetFencingToken() != leaseB.GetFencingToken() {
		fail("Renew changed the fencing token from %d to %d", leaseB.GetFencingToken(), renewed.GetFencingToken())
	}
	step("   expires_at moved forward by %s; renewal_count=1", after.Sub(before))

	// 6. B releases; the lease is then unknown.
	ctx, cancel = context.WithTimeout(context.Background(), rpcTimeout)
	_, err = b.Release(ctx, &lockdv1.ReleaseRequest{LockId: leaseB.GetLockId(), ClientId: clientB})
	cancel()
	if err != nil {
		fail("B Release: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), rpcTimeout)
	got, err := b.GetLock(ctx, &lockdv1.GetLockRequest{LockId: leaseB.GetLockId()})
	cancel()
	if status.Code(err) != codes.NotFound {
		fail("GetLock after Release: want NOT_FOUND, got lease=%v err=%v", got, err)
	}
	step("6. B released; GetLock now fails with NOT_FOUND: %s", status.Convert(err).Message())
	step("OK: go example passed")
}
