"""Benchmark of the signaling service against a bare aio-pika baseline (issue 6); see bench/README.md."""
