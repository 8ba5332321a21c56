"""Benchmarks and load-test scenarios for netpoll and its HTTP server (not shipped code)."""
