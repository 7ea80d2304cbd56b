"""Conformance of the emulator's gRPC surface through the official Python client.

Usage: python3 grpc_client.py HOST:PORT SINK_URL

Run by `tests/it/grpc.rs` (which starts the emulator and the sink and checks what the
sink received). Exits non-zero on the first failed check, or if google-cloud-tasks is not
installed: CI installs it (`pip install google-cloud-tasks`), so a missing package fails.
"""

import sys

import grpc
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2, field_mask_pb2

PARENT = "projects/py-project/locations/europe-west1"
SA = "worker@py-project.iam.gserviceaccount.com"


def expect_error(kind, fn, contains=""):
    try:
        fn()
    except kind as e:
        if contains and contains not in e.message:
            raise AssertionError(f"{kind.__name__}: {e.message!r} lacks {contains!r}")
        return e
    raise AssertionError(f"expected {kind.__name__}")


def main():
    addr, sink = sys.argv[1], sys.argv[2]
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(addr)))
    qn = f"{PARENT}/queues/py-queue"

    q = client.create_queue(
        parent=PARENT,
        queue=tasks_v2.Queue(
            name=qn,
            retry_config=tasks_v2.RetryConfig(max_attempts=5, min_backoff=duration_pb2.Duration(nanos=200_000_000)),
        ),
    )
    assert q.name == qn, q
    assert q.rate_limits.max_dispatches_per_second == 500 and q.rate_limits.max_burst_size == 100, q
    assert q.rate_limits.max_concurrent_dispatches == 1000, q
    assert q.retry_config.max_attempts == 5 and q.retry_config.max_doublings == 16, q
    assert q.state == tasks_v2.Queue.State.RUNNING
    expect_error(exceptions.AlreadyExists, lambda: client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=qn)))
    client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=f"{PARENT}/queues/py-other"))

    # ListQueues with paging.
    pager = client.list_queues(request={"parent": PARENT, "page_size": 1})
    pages = list(pager.pages)
    assert len(pages) == 2 and all(len(p.queues) == 1 for p in pages), pages
    assert sorted(q.name for p in pages for q in p.queues) == [f"{PARENT}/queues/py-other", qn]

    # UpdateQueue changes only the masked field.
    q = client.update_queue(
        queue=tasks_v2.Queue(name=qn, rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=333, max_concurrent_dispatches=7)),
        update_mask=field_mask_pb2.FieldMask(paths=["rate_limits.max_dispatches_per_second"]),
    )
    assert q.rate_limits.max_dispatches_per_second == 333 and q.rate_limits.max_burst_size == 66, q
    assert q.rate_limits.max_concurrent_dispatches == 1000, q

    q = client.pause_queue(name=qn)
    assert q.state == tasks_v2.Queue.State.PAUSED

    named = f"{qn}/tasks/py-task-1"
    task = tasks_v2.Task(
        name=named,
        dispatch_deadline=duration_pb2.Duration(seconds=120),
        http_request=tasks_v2.HttpRequest(
            url=f"{sink}/py?via=grpc",
            http_method=tasks_v2.HttpMethod.POST,
            headers={"Content-Type": "application/json", "X-From": "python"},
            body=b'{"hello":"grpc"}',
            oidc_token=tasks_v2.OidcToken(service_account_email=SA),
        ),
    )
    t = client.create_task(parent=qn, task=task)
    assert t.name == named and t.view == tasks_v2.Task.View.BASIC and t.http_request.body == b"", t
    assert t.http_request.headers["User-Agent"] == "Google-Cloud-Tasks", t
    expect_error(exceptions.AlreadyExists, lambda: client.create_task(parent=qn, task=task), "already exists")
    unnamed = client.create_task(
        parent=qn, task=tasks_v2.Task(http_request=tasks_v2.HttpRequest(url=f"{sink}/unnamed", body=b"x"))
    )
    assert unnamed.name.rsplit("/", 1)[1].isdigit(), unnamed.name
    # A body without a Content-Type gets the service's default.
    assert unnamed.http_request.headers["Content-Type"] == "application/octet-stream", unnamed

    pager = client.list_tasks(request={"parent": qn, "page_size": 1, "response_view": tasks_v2.Task.View.FULL})
    pages = list(pager.pages)
    assert len(pages) == 2, pages
    tasks = [t for p in pages for t in p.tasks]
    assert all(t.view == tasks_v2.Task.View.FULL and t.http_request.body for t in tasks), tasks

    got = client.get_task(request={"name": named, "response_view": tasks_v2.Task.View.FULL})
    assert got.http_request.body == b'{"hello":"grpc"}'
    assert got.dispatch_deadline.seconds == 120

    client.delete_task(name=unnamed.name)
    expect_error(exceptions.NotFound, lambda: client.get_task(name=unnamed.name), "existed recently")

    ran = client.run_task(name=named)
    assert ran.dispatch_count == 1, ran

    q = client.purge_queue(name=qn)
    assert q.purge_time.timestamp() > 0
    q = client.resume_queue(name=qn)
    assert q.state == tasks_v2.Queue.State.RUNNING

    # Errors as the real service words them.
    expect_error(exceptions.InvalidArgument, lambda: client.get_queue(name="projects/p/queues/q"), "Queue name must be formatted")
    expect_error(
        exceptions.InvalidArgument,
        lambda: client.get_task(name=f"{qn}/tasks/not valid"),
        'Task ID "not valid"',
    )
    expect_error(
        exceptions.NotFound,
        lambda: client.create_task(parent=f"{PARENT}/queues/missing", task=tasks_v2.Task(http_request=tasks_v2.HttpRequest(url=sink))),
        "Queue does not exist",
    )
    expect_error(
        exceptions.InvalidArgument,
        lambda: client.create_task(
            parent=qn,
            task=tasks_v2.Task(http_request=tasks_v2.HttpRequest(url=sink, http_method=tasks_v2.HttpMethod.GET, body=b"x")),
        ),
        "Body can only be set if the http_method is POST, PUT, or PATCH.",
    )
    expect_error(
        exceptions.InvalidArgument,
        lambda: client.create_task(
            parent=qn,
            task=tasks_v2.Task(dispatch_deadline=duration_pb2.Duration(seconds=5), http_request=tasks_v2.HttpRequest(url=sink)),
        ),
        "Task.dispatchDeadline must be between [15s, 30m].",
    )
    expect_error(exceptions.MethodNotImplemented, lambda: client.get_iam_policy(resource=qn), "not implemented")

    client.delete_queue(name=f"{PARENT}/queues/py-other")
    expect_error(exceptions.NotFound, lambda: client.get_queue(name=f"{PARENT}/queues/py-other"))
    print("python grpc conformance: OK")


if __name__ == "__main__":
    main()
