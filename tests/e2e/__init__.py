"""End-to-end tests: the real twistd process and real clients."""
