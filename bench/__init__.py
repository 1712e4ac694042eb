"""recq's benchmark suite: one command (``python -m bench``), one table.

Every figure comes from one run on one machine, against the VideoSDK sandbox (in its own
process, 20 ms answer latency) and a throwaway ``redis-server``, so the run neither disturbs nor
is disturbed by a shared Redis. One module per measurement:

- :mod:`bench.stand`: the throwaway Redis and the sandbox every measurement runs against;
- :mod:`bench.sandbox_process`: the sandbox in its own process, with a cheap call counter;
- :mod:`bench.sandbox_capacity`: what the sandbox itself answers (load: :mod:`bench.hammer`);
- :mod:`bench.ceiling`: plain ``requests`` calls from a thread pool, no queue;
- :mod:`bench.recq_run`: ``recq worker`` with its defaults: throughput, memory, CPU;
- :mod:`bench.peer`: the plain Celery task a user would write first (:mod:`bench.peer_app`);
- :mod:`bench.latency`: added latency from enqueue to the VideoSDK call at half load;
- :mod:`bench.enqueue`: enqueue rates through the producer API and ``recq enqueue``;
- :mod:`bench.fanout`: fanning out a 1,000-track batch;
- :mod:`bench.profile`: where a ``recq worker`` spends its time (py-spy), on request;
- :mod:`bench.suite`: the run, in order; :mod:`bench.report`: figures to rows and goals;
  :mod:`bench.table`: the one table; :mod:`bench.usage`, :mod:`bench.procs`: CPU, memory,
  processes.

Benchmarks print figures; they are not timed tests, and CI does not fail on them.
"""
