"""Observability: metrics (Prometheus), and later logging and tracing."""
