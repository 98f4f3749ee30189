"""
C{python -m mailappliance.testing sink ...}: see L{mailappliance.testing.sink}.
"""

from mailappliance.testing.sink import main

main()
