"""Runs one small scenario against a lockd daemon with stubs generated from
proto/lockd/v1/lock.proto: client A holds a lock, client B waits for it in
line, is granted it with a larger fencing token, renews it and releases it.
Exits non-zero on any unexpected answer.

Usage: python3 lockd_example.py HOST:PORT   (with the generated stubs on sys.path)
"""

import secrets
import sys

import grpc

from lockd.v1 import lock_pb2, lock_pb2_grpc

RPC_TIMEOUT = 5.0


class ExampleFailure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise ExampleFailure(message)


def lease_str(lease):
    return (
        f"lock_id={lease.lock_id} fencing_token={lease.fencing_token} "
        f"mode={lock_pb2.LockMode.Name(lease.mode)} client_id={lease.client_id} "
        f"expires_at={lease.expires_at.ToJsonString()} renewal_count={lease.renewal_count}"
    )


def connect(addr):
    channel = grpc.insecure_channel(addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
    except grpc.FutureTimeoutError:
        raise ExampleFailure(f"cannot connect to {addr}")
    return channel, lock_pb2_grpc.LockServiceStub(channel)


def run(addr):
    suffix = secrets.token_hex(6)
    resource = f"examples/python/{suffix}"
    client_a = f"example-python-a-{suffix}"
    client_b = f"example-python-b-{suffix}"

    # Two channels: A and B stand for two separate processes.
    chan_a, a = connect(addr)
    chan_b, b = connect(addr)
    print(f"connected to {addr}; resource {resource!r}")
    try:
        # 1. A acquires R exclusively; nobody holds it, so it must not wait.
        lease_a = a.Acquire(
            lock_pb2.AcquireRequest(
                resource=resource,
                mode=lock_pb2.LOCK_MODE_EXCLUSIVE,
                ttl_ms=10000,
                wait_timeout_ms=0,
                client_id=client_a,
            ),
            timeout=RPC_TIMEOUT,
        ).lease
        check(
            lease_a.lock_id and lease_a.resource == resource and lease_a.client_id == client_a,
            f"A Acquire returned an unexpected lease: {lease_a}",
        )
        print(f"1. A acquired: {lease_str(lease_a)}")

        # 2. B waits in line for R and must be told it is next, alone in the queue.
        stream = b.WaitQueue(
            lock_pb2.AcquireRequest(
                resource=resource,
                mode=lock_pb2.LOCK_MODE_EXCLUSIVE,
                ttl_ms=10000,
                wait_timeout_ms=10000,
                client_id=client_b,
            ),
            timeout=15.0,
        )
        try:
            event = next(stream)
            check(event.WhichOneof("event") == "queued", f"first WaitQueue event is not Queued: {event}")
            queued = event.queued
            print(f"2. B queued: position={queued.position} queue_length={queued.queue_length}")
            check(
                queued.position == 0 and queued.queue_length == 1,
                f"B expected position=0 queue_length=1, got position={queued.position} "
                f"queue_length={queued.queue_length}",
            )

            # 3. A releases; B's stream must then deliver Granted and end OK.
            a.Release(lock_pb2.ReleaseRequest(lock_id=lease_a.lock_id, client_id=client_a), timeout=RPC_TIMEOUT)
            print(f"3. A released {lease_a.lock_id}")
            lease_b = None
            for event in stream:
                kind = event.WhichOneof("event")
                if kind == "queued":
                    # Updates may repeat, but the position never goes up.
                    check(
                        event.queued.position <= queued.position,
                        f"position went up from {queued.position} to {event.queued.position}",
                    )
                    print(f"   B queued again: position={event.queued.position} "
                          f"queue_length={event.queued.queue_length}")
                elif kind == "granted":
                    check(event.granted.HasField("lease"), "Granted without a lease")
                    lease_b = event.granted.lease
                    print(f"   B granted: {lease_str(lease_b)}")
                    break
                else:
                    raise ExampleFailure(f"unexpected WaitQueue event: {event}")
            check(lease_b is not None, "WaitQueue ended before Granted")
            rest = list(stream)  # raises grpc.RpcError if the stream does not end OK
            check(not rest, f"events after Granted: {rest}")
        finally:
            stream.cancel()
        check(
            lease_b.lock_id and lease_b.resource == resource and lease_b.client_id == client_b,
            f"B's lease is not B's lease on {resource!r}: {lease_b}",
        )

        # 4. Fencing tokens strictly increase per resource.
        check(
            lease_b.fencing_token > lease_a.fencing_token,
            f"B's fencing token {lease_b.fencing_token} is not larger than A's {lease_a.fencing_token}",
        )
        print(f"4. fencing token grew: A={lease_a.fencing_token} < B={lease_b.fencing_token}")

        # 5. B renews with a longer ttl: expires_at moves forward, the count goes to 1.
        renewed = b.Renew(
            lock_pb2.RenewRequest(lock_id=lease_b.lock_id, client_id=client_b, ttl_ms=20000),
            timeout=RPC_TIMEOUT,
        ).lease
        print(f"5. B renewed: {lease_str(renewed)}")
        before, after = lease_b.expires_at.ToDatetime(), renewed.expires_at.ToDatetime()
        check(after > before, f"expires_at did not move forward: before={before} after={after}")
        check(renewed.renewal_count == 1, f"renewal_count = {renewed.renewal_count}, want 1")
        check(
            renewed.fencing_token == lease_b.fencing_token,
            f"Renew changed the fencing token from {lease_b.fencing_token} to {renewed.fencing_token}",
        )
        print(f"   expires_at moved forward by {after - before}; renewal_count=1")

        # 6. B releases; the lease is then unknown.
        b.Release(lock_pb2.ReleaseRequest(lock_id=lease_b.lock_id, client_id=client_b), timeout=RPC_TIMEOUT)
        try:
            got = b.GetLock(lock_pb2.GetLockRequest(lock_id=lease_b.lock_id), timeout=RPC_TIMEOUT)
        except grpc.RpcError as err:
            check(
                err.code() == grpc.StatusCode.NOT_FOUND,
                f"GetLock after Release: want NOT_FOUND, got {err.code().name}: {err.details()}",
            )
            print(f"6. B released; GetLock now fails with {err.code().name}: {err.details()}")
        else:
            raise ExampleFailure(f"GetLock after Release: want NOT_FOUND, got lease {got.lease}")
    finally:
        chan_a.close()
        chan_b.close()
    print("OK: python example passed")


def main():
    if len(sys.argv) != 2:
        print("usage: lockd_example.py HOST:PORT", file=sys.stderr)
        return 2
    try:
        run(sys.argv[1])
    except ExampleFailure as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"FAIL: RPC failed: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
