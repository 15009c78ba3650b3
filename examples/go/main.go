// Command lockd-example shows the pattern for using a lockd lock from Go, with
// stubs generated from proto/lockd/v1/lock.proto.
//
// Two workers update one record in a tiny in-process "storage". Each waits in
// line with WaitQueue (retrying UNAVAILABLE with backoff within its deadline),
// renews its lease in the background every ttl/3 while it works, writes with
// its fencing token, and releases in a defer. The storage rejects a token
// lower than the last one it accepted. Worker A works for twice its ttl, so
// without the renewals B would be granted while A still writes. It exits
// non-zero on any unexpected answer.
//
// Usage: lockd-example HOST:PORT
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand"
	"os"
	"sync"
	"time"

	lockdv1 "github.com/lockd/lockd/gen/go/lockd/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	ttl        = 1500 * time.Millisecond
	rpcTimeout = 5 * time.Second
)

// Storage stands for the resource the lock protects: it accepts a write only
// with a fencing token at least as large as the last one it accepted.
type Storage struct {
	mu        sync.Mutex
	lastToken uint64
	value     string
}

func (s *Storage) Write(token uint64, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token < s.lastToken {
		return fmt.Errorf("stale token %d < last accepted %d", token, s.lastToken)
	}
	s.lastToken, s.value = token, value
	return nil
}

func (s *Storage) Value() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.value
}

// acquire waits in line for a lease until ctx's deadline, retrying UNAVAILABLE
// (a Redis blip, a daemon restart) with exponential backoff and jitter.
func acquire(ctx context.Context, c lockdv1.LockServiceClient, req *lockdv1.AcquireRequest,
	onQueued func(*lockdv1.Queued)) (*lockdv1.Lease, error) {
	backoff := 100 * time.Millisecond
	for {
		deadline, _ := ctx.Deadline()
		left := time.Until(deadline)
		if left <= 0 {
			return nil, context.DeadlineExceeded
		}
		wait := uint64(left.Milliseconds())
		req.WaitTimeoutMs = &wait
		lease, err := waitQueue(ctx, c, req, onQueued)
		if status.Code(err) != codes.Unavailable {
			return lease, err
		}
		fmt.Printf("   %s: UNAVAILABLE, retrying in %s\n", req.GetClientId(), backoff)
		select {
		case <-time.After(backoff/2 + time.Duration(mrand.Int63n(int64(backoff/2)))):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if backoff *= 2; backoff > 2*time.Second {
			backoff = 2 * time.Second
		}
	}
}

func waitQueue(ctx context.Context, c lockdv1.LockServiceClient, req *lockdv1.AcquireRequest,
	onQueued func(*lockdv1.Queued)) (*lockdv1.Lease, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.WaitQueue(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if q := ev.GetQueued(); q != nil && onQueued != nil {
			onQueued(q)
		}
		if g := ev.GetGranted(); g != nil {
			return g.GetLease(), nil
		}
	}
}

// withLock holds a lease while work runs: renewed every ttl/3, released when
// work returns. work's context is cancelled if the lease is lost (NOT_FOUND
// and the like, or no successful renewal for a whole ttl).
func withLock(ctx context.Context, c lockdv1.LockServiceClient, req *lockdv1.AcquireRequest,
	onQueued func(*lockdv1.Queued), work func(ctx context.Context, lease *lockdv1.Lease) error) error {
	lease, err := acquire(ctx, c, req, onQueued)
	if err != nil {
		return fmt.Errorf("%s acquire: %w", req.GetClientId(), err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		// NOT_FOUND means it expired already; on any error the ttl ends it anyway.
		if _, err := c.Release(rctx, &lockdv1.ReleaseRequest{LockId: lease.GetLockId(), ClientId: lease.GetClientId()}); err != nil {
			fmt.Printf("   release %s: %v\n", lease.GetLockId(), err)
		}
	}()

	workCtx, lost := context.WithCancel(ctx)
	var renewer sync.WaitGroup
	defer renewer.Wait() // deferred calls run last first: lost, Wait, Release
	defer lost()
	renewer.Add(1)
	go func() {
		defer renewer.Done()
		ticker := time.NewTicker(ttl / 3)
		defer ticker.Stop()
		validUntil := time.Now().Add(ttl)
		for {
			select {
			case <-workCtx.Done():
				return
			case <-ticker.C:
			}
			sent := time.Now()
			rctx, cancel := context.WithTimeout(workCtx, ttl/3)
			_, err := c.Renew(rctx, &lockdv1.RenewRequest{LockId: lease.GetLockId(), ClientId: lease.GetClientId()})
			cancel()
			switch code := status.Code(err); {
			case err == nil:
				validUntil = sent.Add(ttl)
			case workCtx.Err() != nil: // work is done
				return
			case code != codes.Unavailable && code != codes.DeadlineExceeded, time.Now().After(validUntil):
				fmt.Printf("   %s: lease lost: %v\n", lease.GetClientId(), err)
				lost()
				return
			}
		}
	}()
	return work(workCtx, lease)
}

func run(addr string) error {
	b := make([]byte, 6)
	rand.Read(b)
	suffix := hex.EncodeToString(b)
	resource := "examples/go/" + suffix
	request := func(clientID string) *lockdv1.AcquireRequest {
		return &lockdv1.AcquireRequest{Resource: resource, Mode: lockdv1.LockMode_LOCK_MODE_EXCLUSIVE,
			TtlMs: uint64(ttl.Milliseconds()), ClientId: clientID}
	}
	// Two connections: A and B stand for two separate processes.
	// grpc-go 1.33 (Debian's) has no credentials/insecure package.
	connA, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer connA.Close()
	connB, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer connB.Close()
	a, b2 := lockdv1.NewLockServiceClient(connA), lockdv1.NewLockServiceClient(connB)
	fmt.Printf("connecting to %s; resource %q\n", addr, resource)

	var storage Storage
	var leaseA, leaseB *lockdv1.Lease
	aHolds := make(chan struct{})
	errs := make(chan error, 2)

	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		errs <- withLock(ctx, a, request("example-go-a-"+suffix), nil, func(ctx context.Context, lease *lockdv1.Lease) error {
			leaseA = lease
			fmt.Printf("1. A granted, fencing token %d\n", lease.GetFencingToken())
			if err := storage.Write(lease.GetFencingToken(), "A started"); err != nil {
				return err
			}
			close(aHolds)
			// Work for two ttls: only the renewals keep B out meanwhile.
			select {
			case <-time.After(2 * ttl):
			case <-ctx.Done():
				return errors.New("A lost its lease while working")
			}
			if err := storage.Write(lease.GetFencingToken(), "A done"); err != nil {
				return err
			}
			fmt.Println("3. A worked for 2 x ttl and wrote again: the renewals kept its lease")
			return nil
		})
	}()
	select {
	case <-aHolds:
	case err := <-errs:
		return err
	}

	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var positions []uint64
		onQueued := func(q *lockdv1.Queued) {
			positions = append(positions, q.GetPosition())
			fmt.Printf("2. B queued: position=%d queue_length=%d\n", q.GetPosition(), q.GetQueueLength())
		}
		errs <- withLock(ctx, b2, request("example-go-b-"+suffix), onQueued, func(ctx context.Context, lease *lockdv1.Lease) error {
			leaseB = lease
			fmt.Printf("4. B granted, fencing token %d\n", lease.GetFencingToken())
			if len(positions) == 0 || positions[0] != 0 {
				return fmt.Errorf("B expected to be told position 0 first, got %v", positions)
			}
			if v := storage.Value(); v != "A done" {
				return fmt.Errorf("B was granted before A finished: storage has %q", v)
			}
			return storage.Write(lease.GetFencingToken(), "B done")
		})
	}()
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			return err
		}
	}

	if leaseB.GetFencingToken() <= leaseA.GetFencingToken() {
		return fmt.Errorf("B's fencing token %d is not larger than A's %d", leaseB.GetFencingToken(), leaseA.GetFencingToken())
	}
	err = storage.Write(leaseA.GetFencingToken(), "A, late")
	if err == nil {
		return errors.New("storage accepted A's stale token")
	}
	fmt.Printf("5. a late write with A's token is rejected: %v\n", err)
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if _, err := b2.GetLock(ctx, &lockdv1.GetLockRequest{LockId: leaseB.GetLockId()}); status.Code(err) != codes.NotFound {
		return fmt.Errorf("GetLock after release: want NOT_FOUND, got %v", err)
	}
	fmt.Println("6. both released; GetLock on B's lock: NOT_FOUND")
	return nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lockd-example HOST:PORT")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("OK: go example passed")
}
