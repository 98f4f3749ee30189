"""
The benchmark of mailappliance against Postfix and Dovecot (see the
"Benchmarks" section of README.md): C{bench/run} installs the peers and
runs C{python -m bench}.

Not part of the test suite: it takes minutes and needs root, Postfix and
Dovecot. C{tests/test_io_budget.py} is the fast guard that runs in CI.
"""
