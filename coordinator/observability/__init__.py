"""Structured logs, W3C trace propagation and Prometheus metrics."""
