"""Benchmarks for visitor-enrich: ingest, queue overhead, quota use, a naive baseline, memory.

Run ``python -m bench`` (``make bench``). Every scenario starts what it needs on loopback (the
real web and worker processes, fake providers and sinks, a load generator in its own process)
and runs its reference in the same invocation, so that the figures worth reading are ratios
taken on the same, possibly noisy, machine at the same time.

Modules: ``runner`` (command line, table, JSON), ``scenarios`` (the five measurements),
``procs`` (starting, waiting for and stopping processes; Redis clean-up), ``fakes`` (provider
and sink fakes with latency and quota), ``loadgen`` (signed HTTP load), ``bare_app`` (the ingest
reference), ``noop_app`` (the queue reference), ``naive`` (the hand-written Celery baseline).
"""
