"""Benchmark of the signaling service against a bare aio-pika baseline; see bench/README.md."""
