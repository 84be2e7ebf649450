"""What operators see of the service: Prometheus metrics, structured logs and traces."""
