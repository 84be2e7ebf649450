"""What the tests of a broker that refuses the service share (kept out of conftest.py): waiting until
``/readyz`` names the refusal, and the refusal's log lines."""

from __future__ import annotations

import time

from testkit.processes import ServiceProcess


def wait_refused(service: ServiceProcess, timeout: float = 20.0) -> str:
    """The ``/readyz`` body once it names a refusal (503 throughout)."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        assert service.process is not None and service.process.poll() is None, service.logs()[-2000:]
        try:
            status, body = service.http("/readyz")
        except OSError:
            status = 0
        if status:
            assert status == 503, body
            if "amqp_refused:" in body:
                return body
        time.sleep(0.1)
    raise AssertionError(f"/readyz never named a refusal; last body {body!r}\n{service.logs()[-2000:]}")


def refusal_errors(service: ServiceProcess) -> list[str]:
    """The error lines of its log; none of its lines may call the broker unreachable."""
    records = service.log_records()
    assert not [record for record in records if "not reachable" in str(record.get("message"))], (
        "a refusing broker was reported as unreachable"
    )
    return [str(record["message"]) for record in records if record.get("level") == "error"]
