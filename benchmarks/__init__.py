"""Benchmark suite: hand-written PyTorch references, Pyro model/guide pairs, the timing
harness (``python -m benchmarks.run``) and the storchastic peer
(``python -m benchmarks.storchastic_peer``)."""
