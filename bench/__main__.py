"""
C{python -m bench}: see L{bench.main}.
"""

from bench.main import main

main()
