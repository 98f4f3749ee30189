"""mailappliance: a small, safe mail server for a LAN host, on Twisted."""
__version__ = "0.1.0"
