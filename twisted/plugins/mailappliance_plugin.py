"""
The twistd plugin C{mailappliance}: C{twistd -n mailappliance --config FILE}.

Kept to a few lines on purpose: Twisted imports every module in
C{twisted/plugins} when it scans for plugins, so the real work lives in
L{mailappliance.tap}, imported only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

mailappliance = ServiceMaker(
    "mailappliance",
    "mailappliance.tap",
    "A mail server: ESMTP, submission, outbound relay, Maildir and POP3.",
    "mailappliance",
)
