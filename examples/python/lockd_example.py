"""The pattern for using a lockd lock from Python, with stubs generated from
proto/lockd/v1/lock.proto.

Two workers update one record in a tiny in-process "storage". Each one waits in
line with WaitQueue (retrying UNAVAILABLE with backoff within its deadline),
renews its lease in the background every ttl/3 while it works, writes with its
fencing token, and releases in a `finally`. The storage rejects a token lower
than the last one it accepted. Worker A works for twice its ttl, so without the
renewals B would be granted while A still writes. Exits non-zero on any
unexpected answer.

Usage: python3 lockd_example.py HOST:PORT   (with the generated stubs on sys.path)
"""

import contextlib
import random
import secrets
import sys
import threading
import time

import grpc

from lockd.v1 import lock_pb2, lock_pb2_grpc

TTL_MS = 1500
RPC_TIMEOUT = 5.0


class ExampleFailure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise ExampleFailure(message)


class StaleToken(Exception):
    pass


class Storage:
    """Stands for the resource the lock protects: it accepts a write only with a
    fencing token at least as large as the last one it accepted."""

    def __init__(self):
        self._mu = threading.Lock()
        self._last_token = 0
        self.value = None

    def write(self, token, value):
        with self._mu:
            if token < self._last_token:
                raise StaleToken(f"token {token} < last accepted {self._last_token}")
            self._last_token = token
            self.value = value


def acquire(stub, req, deadline, on_queued=None):
    """Waits in line for a lease until `deadline` (time.monotonic()), retrying
    UNAVAILABLE (Redis blip, daemon restart) with exponential backoff and jitter."""
    backoff = 0.1
    while True:
        remaining = deadline - time.monotonic()
        check(remaining > 0, f"not granted {req.resource!r} before the deadline")
        req.wait_timeout_ms = int(remaining * 1000)
        try:
            for event in stub.WaitQueue(req, timeout=remaining + RPC_TIMEOUT):
                if event.WhichOneof("event") == "queued" and on_queued:
                    on_queued(event.queued)
                elif event.WhichOneof("event") == "granted":
                    return event.granted.lease
            raise ExampleFailure("WaitQueue ended without Granted")
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            print(f"   {req.client_id}: UNAVAILABLE, retrying in {backoff:.1f}s")
            time.sleep(min(backoff * random.uniform(0.5, 1.0), max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 2.0)


class Renewer(threading.Thread):
    """Renews a lease every ttl/3 until stopped. Sets `lost` when the lease is
    gone (NOT_FOUND and the like) or may have run out (no renewal for a ttl)."""

    def __init__(self, stub, lease):
        super().__init__(daemon=True)
        self.stub, self.lease = stub, lease
        self.lost = threading.Event()
        self._stopped = threading.Event()

    def run(self):
        ttl = self.lease.ttl_ms / 1000
        valid_until = time.monotonic() + ttl
        while not self._stopped.wait(ttl / 3):
            sent = time.monotonic()
            try:
                self.lease = self.stub.Renew(
                    lock_pb2.RenewRequest(lock_id=self.lease.lock_id, client_id=self.lease.client_id),
                    timeout=ttl / 3,
                ).lease
                valid_until = sent + ttl
            except grpc.RpcError as err:
                retryable = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retryable or time.monotonic() >= valid_until:
                    self.lost.set()
                    return

    def stop(self):
        self._stopped.set()
        self.join()


@contextlib.contextmanager
def locked(stub, req, deadline, on_queued=None):
    """Holds a lease, renewed in the background, for the body of a `with`;
    releases it however the body ends."""
    lease = acquire(stub, req, deadline, on_queued)
    renewer = Renewer(stub, lease)
    renewer.start()
    try:
        yield lease, renewer
    finally:
        renewer.stop()
        try:
            stub.Release(lock_pb2.ReleaseRequest(lock_id=lease.lock_id, client_id=lease.client_id),
                         timeout=RPC_TIMEOUT)
        except grpc.RpcError as err:
            # NOT_FOUND: it expired already. Otherwise the ttl ends it anyway.
            print(f"   release {lease.lock_id}: {err.code().name}")


def run(addr):
    suffix = secrets.token_hex(6)
    resource = f"examples/python/{suffix}"
    storage = Storage()
    a_holds = threading.Event()
    results = {}

    def request(client_id):
        return lock_pb2.AcquireRequest(resource=resource, mode=lock_pb2.LOCK_MODE_EXCLUSIVE,
                                       ttl_ms=TTL_MS, client_id=client_id)

    def worker_a(stub):
        with locked(stub, request(f"example-python-a-{suffix}"), time.monotonic() + 10) as (lease, renewer):
            print(f"1. A granted, fencing token {lease.fencing_token}")
            storage.write(lease.fencing_token, "A started")
            a_holds.set()
            # Work for two ttls: only the renewals keep B out meanwhile.
            check(not renewer.lost.wait(2 * TTL_MS / 1000), "A lost its lease while working")
            storage.write(lease.fencing_token, "A done")
            print(f"3. A worked for 2 x ttl, renewed {renewer.lease.renewal_count} times, and wrote again")
            results["a"] = lease

    def worker_b(stub):
        positions = []

        def on_queued(q):
            positions.append(q.position)
            print(f"2. B queued: position={q.position} queue_length={q.queue_length}")

        with locked(stub, request(f"example-python-b-{suffix}"), time.monotonic() + 10, on_queued) as (lease, _renewer):
            check(positions[:1] == [0], f"B expected to be told position 0 first, got {positions}")
            print(f"4. B granted, fencing token {lease.fencing_token}")
            check(storage.value == "A done", f"B was granted before A finished: storage has {storage.value!r}")
            storage.write(lease.fencing_token, "B done")
            results["b"] = lease

    with grpc.insecure_channel(addr) as chan_a, grpc.insecure_channel(addr) as chan_b:
        # Two channels: A and B stand for two separate processes.
        a, b = lock_pb2_grpc.LockServiceStub(chan_a), lock_pb2_grpc.LockServiceStub(chan_b)
        print(f"connecting to {addr}; resource {resource!r}")
        errors = []

        def guarded(fn, stub):
            try:
                fn(stub)
            except Exception as err:  # reported by the main thread
                errors.append(err)
                a_holds.set()

        ta = threading.Thread(target=guarded, args=(worker_a, a))
        ta.start()
        a_holds.wait(10)
        tb = threading.Thread(target=guarded, args=(worker_b, b))
        tb.start()
        ta.join()
        tb.join()
        if errors:
            raise errors[0]

        lease_a, lease_b = results["a"], results["b"]
        check(lease_b.fencing_token > lease_a.fencing_token, "B's fencing token is not larger than A's")
        try:
            storage.write(lease_a.fencing_token, "A, late")
            raise ExampleFailure("storage accepted A's stale token")
        except StaleToken as err:
            print(f"5. a late write with A's token is rejected: {err}")
        try:
            b.GetLock(lock_pb2.GetLockRequest(lock_id=lease_b.lock_id), timeout=RPC_TIMEOUT)
            raise ExampleFailure("B's lock is still live after release")
        except grpc.RpcError as err:
            check(err.code() == grpc.StatusCode.NOT_FOUND, f"GetLock after release: {err.code().name}")
            print("6. both released; GetLock on B's lock: NOT_FOUND")
    print("OK: python example passed")


def main():
    if len(sys.argv) != 2:
        print("usage: lockd_example.py HOST:PORT", file=sys.stderr)
        return 2
    try:
        run(sys.argv[1])
    except (ExampleFailure, StaleToken) as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"FAIL: RPC failed: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
