"""A faithful, strict stand-in for the VideoSDK REST API, for tests, demos and benchmarks.

- :mod:`~worker.sandbox.service`: :class:`Sandbox`, the API's state and answers;
- :mod:`~worker.sandbox.auth`: the token checks; :mod:`~worker.sandbox.schema`: the bodies;
- :mod:`~worker.sandbox.rooms`: sessions and recordings; :mod:`~worker.sandbox.endpoints`: routes;
- :mod:`~worker.sandbox.faults`: injected faults; :mod:`~worker.sandbox.calls`: the call log;
- :mod:`~worker.sandbox.control`: the ``/_sandbox/`` control API;
- :mod:`~worker.sandbox.server`: :class:`SandboxServer` (HTTP) and :func:`run_forever`.

Typical test use::

    with SandboxServer() as server:
        server.sandbox.inject(Fault(status=503, retry_after="1"))
        ...  # point the client at server.url
        assert server.sandbox.accepted("/v2/recordings/start")
"""

from worker.sandbox.calls import Call
from worker.sandbox.faults import Fault
from worker.sandbox.messages import Reply
from worker.sandbox.server import SandboxServer, run_forever
from worker.sandbox.service import DEFAULT_API_KEY, DEFAULT_SECRET, Sandbox

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_SECRET",
    "Call",
    "Fault",
    "Reply",
    "Sandbox",
    "SandboxServer",
    "run_forever",
]
