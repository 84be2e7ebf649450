"""App wiring: settings, start-up and shutdown, HTTP endpoints, metrics, logging, the CLI."""
