"""The benchmark harnesses: one of servekit's three rooms (docs/architecture.md).

``serving`` runs vLLM's own ``vllm bench serve`` and compares runs (``python -m servekit.bench``),
``report`` reads and plots its results, ``provision`` times ``servekit up`` on the lab at several
sizes (``python -m servekit.bench.provision``) and ``byhand`` starts a node's vLLM by hand, the
overhead benchmark's baseline (benchmarks/overhead.yml copies it to the nodes). They use the core
and the lab; neither imports them.
"""
