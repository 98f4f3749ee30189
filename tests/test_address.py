"""
Tests for L{mailappliance.address}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import (
    AddressError,
    Mailbox,
    log_address,
    normalise_domain,
    parse_mailbox,
    parse_path,
)


class ParseMailboxTests(SynchronousTestCase):
    def test_simple(self):
        """
        A dot-atom local part and a domain; the domain is lower-cased, the
        local part keeps its spelling, the key is all lower-case.
        """
        m = parse_mailbox("John.Smith@Example.TEST")
        self.assertEqual(m, Mailbox("John.Smith", "example.test"))
        self.assertEqual(m.key, "john.smith@example.test")
        self.assertEqual(str(m), "John.Smith@example.test")

    def test_quoted_dot_atom_unquoted(self):
        """
        A quoted local part that is a valid dot-atom is unquoted.
        """
        self.assertEqual(parse_mailbox('"john"@x.test'), Mailbox("john", "x.test"))

    def test_quoted_kept(self):
        """
        A quoted local part that needs quoting stays quoted, canonically
        escaped.
        """
        self.assertEqual(parse_mailbox('"john doe"@x.test').local, '"john doe"')
        self.assertEqual(parse_mailbox('"a\\"b"@x.test').local, '"a\\"b"')
        self.assertEqual(parse_mailbox('"a\\b"@x.test').local, "ab")
        self.assertEqual(parse_mailbox('"a@b"@x.test').local, '"a@b"')

    def test_bad_quoted(self):
        for bad in ('"abc@x.test', '"a"b"@x.test', 'a"b"@x.test', '"a\\"@x.test'):
            self.assertRaises(AddressError, parse_mailbox, bad)

    def test_bad_dot_atom(self):
        for bad in ("a..b@x.test", ".a@x.test", "a.@x.test", "a b@x.test", "a(b)@x.test", "@x.test", "a@", "a",
                    "a@b@c", "a@-x.test", "a@x-.test", "a@x..test", "a@x.test."):
            self.assertRaises(AddressError, parse_mailbox, bad)

    def test_lengths(self):
        """
        Local part 64 octets, domain 255, whole address 256 (RFC 5321
        4.5.3.1).
        """
        parse_mailbox("a" * 64 + "@x.test")
        self.assertRaises(AddressError, parse_mailbox, "a" * 65 + "@x.test")
        label = "a" * 63
        parse_mailbox("b@" + ".".join([label] * 3) + ".abc")
        self.assertRaises(AddressError, parse_mailbox, "b@" + ".".join([label] * 4) + ".abc")
        self.assertRaises(AddressError, parse_mailbox, "b@" + "a" * 64 + ".test")

    def test_utf8(self):
        """
        UTF-8 local parts and IDNA domains only with allow_utf8; the domain
        becomes A-labels.
        """
        m = parse_mailbox("Jöran@Bücher.example", allow_utf8=True)
        self.assertEqual(m, Mailbox("Jöran", "xn--bcher-kva.example"))
        self.assertTrue(m.needs_smtputf8)
        self.assertFalse(parse_mailbox("a@xn--bcher-kva.example").needs_smtputf8)
        self.assertRaises(AddressError, parse_mailbox, "Jöran@x.test", allow_utf8=False)
        self.assertRaises(AddressError, parse_mailbox, "j@bücher.example", allow_utf8=False)
        self.assertRaises(AddressError, parse_mailbox, "a@xn--zz.example")

    def test_key_normal_form(self):
        """
        The composed and decomposed spellings of one UTF-8 local part have
        one key (NFC, lower case); the local part itself, sent to remote
        hosts, is kept as given.
        """
        composed = parse_mailbox("Zo\u00eb@example.test", allow_utf8=True)
        decomposed = parse_mailbox("Zoe\u0308@example.test", allow_utf8=True)
        self.assertEqual(composed.key, "zo\u00eb@example.test")
        self.assertEqual(decomposed.key, "zo\u00eb@example.test")
        self.assertEqual(decomposed.local, "Zoe\u0308")

    def test_bytes(self):
        self.assertEqual(parse_mailbox(b"a@x.test"), Mailbox("a", "x.test"))
        self.assertRaises(AddressError, parse_mailbox, b"\xff@x.test")

    def test_controls(self):
        for bad in ("a\x00b@x.test", "a\r@x.test", "a@x.test\n", '"a\x7f"@x.test'):
            self.assertRaises(AddressError, parse_mailbox, bad)

    def test_literals(self):
        self.assertEqual(parse_mailbox("a@[192.0.2.1]").domain, "[192.0.2.1]")
        self.assertEqual(parse_mailbox("a@[IPv6:2001:DB8:0::1]").domain, "[IPv6:2001:db8::1]")
        for bad in ("a@[300.0.0.1]", "a@[192.0.2.1", "a@[foo:bar]", "a@[IPv6:zz]"):
            self.assertRaises(AddressError, parse_mailbox, bad)

    def test_subaddress(self):
        self.assertEqual(parse_mailbox("bob+tag+x@x.test").without_subaddress(), Mailbox("bob", "x.test"))
        self.assertIsNone(parse_mailbox("bob@x.test").without_subaddress())
        self.assertIsNone(parse_mailbox("+tag@x.test").without_subaddress())
        self.assertIsNone(parse_mailbox('"a+b c"@x.test').without_subaddress())

    def test_domain(self):
        self.assertEqual(normalise_domain("EXAMPLE.test"), "example.test")
        self.assertRaises(AddressError, normalise_domain, "")
        self.assertRaises(AddressError, normalise_domain, "a_b.test")


class ParsePathTests(SynchronousTestCase):
    def test_null(self):
        self.assertIsNone(parse_path("<>"))

    def test_path(self):
        self.assertEqual(parse_path("<a@x.test>"), Mailbox("a", "x.test"))

    def test_source_route(self):
        """
        Source routes are accepted and stripped (RFC 5321 4.1.2, appendix C).
        """
        self.assertEqual(parse_path("<@relay.test,@other.test:a@x.test>"), Mailbox("a", "x.test"))
        self.assertEqual(parse_path("<@relay.test:a@x.test>"), Mailbox("a", "x.test"))
        for bad in ("<@:a@x.test>", "<@relay.test,a@x.test>", "<@relay.test>"):
            self.assertRaises(AddressError, parse_path, bad)

    def test_brackets(self):
        for bad in ("a@x.test", "<a@x.test", "a@x.test>", "<", ">", "", "<<a@x.test>>"):
            self.assertRaises(AddressError, parse_path, bad)

    def test_utf8_needs_flag(self):
        self.assertRaises(AddressError, parse_path, "<ö@x.test>")
        self.assertEqual(parse_path("<ö@x.test>", allow_utf8=True).local, "ö")


class PropertyTests(SynchronousTestCase):
    """
    Whatever the input, only L{AddressError} comes out.
    """

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(st.text(), st.binary()), st.booleans())
    def test_mailbox_never_crashes(self, text, utf8):
        try:
            m = parse_mailbox(text, allow_utf8=utf8)
        except AddressError:
            return
        # What parses is stable: its own text parses to the same mailbox.
        self.assertEqual(parse_mailbox(str(m), allow_utf8=True), m)

    @settings(max_examples=400, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list('<>@:,."\\ab.-[]\x00é+ ')), max_size=40), st.booleans())
    def test_path_never_crashes(self, text, utf8):
        try:
            parse_path(text, allow_utf8=utf8)
        except AddressError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.from_regex(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[a-z0-9-]{1,10}){0,2}@[a-z]{1,10}(\.[a-z]{2,5}){1,2}",
                         fullmatch=True))
    def test_valid_round_trip(self, text):
        m = parse_mailbox(text)
        self.assertEqual(str(m), text)


class LogAddressTests(SynchronousTestCase):
    def test_plain_unchanged(self):
        """
        An address without white space or backslashes is logged as it is.
        """
        self.assertEqual(log_address(Mailbox("a.b+c", "example.test")), "a.b+c@example.test")
        self.assertEqual(log_address(parse_mailbox("ü@bücher.test")), "ü@xn--bcher-kva.test")

    def test_cannot_forge_fields(self):
        """
        White space (and control characters) in a quoted local part are
        escaped, and so are backslashes, so a logged address is one token:
        it cannot add C{key=value} fields to the line.
        """
        logged = log_address(parse_mailbox('"x qid=ABC status=sent\\\\"@example.test'))
        self.assertEqual(logged, '"x\\x20qid=ABC\\x20status=sent\\\\\\\\"@example.test')
        self.assertEqual(len(logged.split()), 1)
