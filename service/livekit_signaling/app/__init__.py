"""Wiring: settings, start-up and shutdown, the HTTP endpoints, the CLI."""
