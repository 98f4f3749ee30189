# -*- test-case-name: tests.test_pop3_server -*-
"""
The POP3 access service: L{mailappliance.pop3.server.POP3Factory} with its
settings in L{mailappliance.pop3.settings.POP3Settings}.
"""
