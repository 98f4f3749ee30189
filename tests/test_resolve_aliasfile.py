# -*- test-case-name: tests.test_resolve_aliasfile -*-
"""
Tests for L{mailappliance.resolve.aliasfile}: the aliases file syntax.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import Mailbox
from mailappliance.resolve.aliasfile import AliasesFileError, parse_aliases


def targets(entry):
    """
    @return: the keys of an entry's targets, for short assertions.
    """
    return [target.key for target in entry.targets]


class SyntaxTests(SynchronousTestCase):
    """
    Files that parse.
    """

    def test_spec_example(self):
        """
        The example of SPEC section 4 parses into the three kinds of names.
        """
        aliases = parse_aliases(
            b"postmaster@example.test: alice@example.test\n"
            b"team@example.test:       alice@example.test, bob@example.test, carol@elsewhere.test\n"
            b"abuse:                   alice@example.test      # bare local part: every local domain\n"
            b"@example.test:           alice@example.test      # catch-all for the domain, used last\n",
            "aliases",
        )
        self.assertEqual(sorted(aliases.addresses), ["postmaster@example.test", "team@example.test"])
        self.assertEqual(
            targets(aliases.addresses["team@example.test"]),
            ["alice@example.test", "bob@example.test", "carol@elsewhere.test"],
        )
        self.assertEqual(list(aliases.local_parts), ["abuse"])
        self.assertEqual(targets(aliases.local_parts["abuse"]), ["alice@example.test"])
        self.assertEqual(list(aliases.domains), ["example.test"])
        self.assertEqual(targets(aliases.domains["example.test"]), ["alice@example.test"])
        self.assertEqual(len(aliases), 4)

    def test_entry_fields(self):
        """
        An entry keeps its name as written, its line and its targets as
        L{Mailbox}es with their spelling.
        """
        aliases = parse_aliases(b"\n# c\nTeam@Example.TEST: Bob@Example.test\n", "aliases")
        entry = aliases.addresses["team@example.test"]
        self.assertEqual(entry.name, "Team@Example.TEST")
        self.assertEqual(entry.line, 3)
        self.assertEqual(entry.targets, (Mailbox("Bob", "example.test"),))

    def test_empty(self):
        """
        An empty file, or one of comments and blank lines, has no aliases.
        """
        self.assertEqual(len(parse_aliases(b"", "aliases")), 0)
        self.assertEqual(len(parse_aliases(b"# nothing\n\n   \n\t# indented comment\n", "aliases")), 0)

    def test_continuation(self):
        """
        Lines starting with a space or a tab continue the alias; the comma
        may end a line or start the next; blank lines and comment lines in
        between do not end the alias.
        """
        aliases = parse_aliases(
            b"team@x.test: a@x.test,\n"
            b"  b@x.test # comment after a continuation\n"
            b"\n"
            b"# a comment line between continuation lines\n"
            b"\t, c@x.test\n"
            b"other@x.test: d@x.test\n",
            "aliases",
        )
        self.assertEqual(targets(aliases.addresses["team@x.test"]), ["a@x.test", "b@x.test", "c@x.test"])
        self.assertEqual(targets(aliases.addresses["other@x.test"]), ["d@x.test"])

    def test_value_on_continuation_line(self):
        """
        All targets may follow on continuation lines.
        """
        aliases = parse_aliases(b"team@x.test:\n    a@x.test,\n    b@x.test\n", "aliases")
        self.assertEqual(targets(aliases.addresses["team@x.test"]), ["a@x.test", "b@x.test"])

    def test_crlf_and_bom(self):
        """
        CRLF line ends and a UTF-8 byte order mark are accepted.
        """
        aliases = parse_aliases(b"\xef\xbb\xbfa@x.test: b@x.test\r\n  , c@x.test\r\n", "aliases")
        self.assertEqual(targets(aliases.addresses["a@x.test"]), ["b@x.test", "c@x.test"])

    def test_quoted_local_parts(self):
        """
        C{#}, C{,} and C{:} inside a quoted local part are part of the
        address, not a comment, separator or name end; a quoted C{#} in a
        dot-atom is unquoted so it matches the unquoted spelling.
        """
        aliases = parse_aliases(
            b'"a:b"@x.test: "c,d"@x.test, "e#f"@x.test, "g h"@x.test # real comment\n'
            b'"x#y": z@x.test\n',
            "aliases",
        )
        self.assertEqual(
            targets(aliases.addresses['"a:b"@x.test']),
            ['"c,d"@x.test', "e#f@x.test", '"g h"@x.test'],
        )
        self.assertEqual(list(aliases.local_parts), ["x#y"])

    def test_case_insensitive_names(self):
        """
        Names are stored lower-cased: local part and domain.
        """
        aliases = parse_aliases(b"Abuse: a@x.test\n@EXAMPLE.Test: b@x.test\nBoB@X.TEST: c@x.test\n", "aliases")
        self.assertEqual(list(aliases.local_parts), ["abuse"])
        self.assertEqual(list(aliases.domains), ["example.test"])
        self.assertEqual(list(aliases.addresses), ["bob@x.test"])

    def test_utf8(self):
        """
        UTF-8 local parts and internationalised domains are accepted
        (domains are stored as A-labels).
        """
        data = "jörg@bücher.test: ünsal@x.test\n@bücher.test: a@x.test\n".encode()
        aliases = parse_aliases(data, "aliases")
        self.assertEqual(list(aliases.addresses), ["jörg@xn--bcher-kva.test"])
        self.assertEqual(targets(aliases.addresses["jörg@xn--bcher-kva.test"]), ["ünsal@x.test"])
        self.assertEqual(list(aliases.domains), ["xn--bcher-kva.test"])

    def test_utf8_normal_form(self):
        """
        Alias names are stored in normal form C, so that a decomposed
        spelling in the file matches the composed one at RCPT (and the two
        spellings are one name).
        """
        aliases = parse_aliases("zoe\u0308: a@x.test\nzoe\u0308@x.test: b@x.test\n".encode(), "aliases")
        self.assertEqual(list(aliases.local_parts), ["zo\u00eb"])
        self.assertEqual(list(aliases.addresses), ["zo\u00eb@x.test"])

    def test_duplicate_targets(self):
        """
        A target written twice (in any case) is kept once, first spelling.
        """
        aliases = parse_aliases(b"a@x.test: B@x.test, c@x.test, b@X.test\n", "aliases")
        self.assertEqual(
            aliases.addresses["a@x.test"].targets, (Mailbox("B", "x.test"), Mailbox("c", "x.test"))
        )

    def test_same_name_different_kinds(self):
        """
        A bare local part, a full address with that local part and the
        catch-all of the domain are three different names.
        """
        aliases = parse_aliases(b"abuse: a@x.test\nabuse@x.test: b@x.test\n@x.test: c@x.test\n", "aliases")
        self.assertEqual(len(aliases), 3)

    def test_white_space_around_name(self):
        """
        White space between the name and the colon is allowed.
        """
        aliases = parse_aliases(b"a@x.test\t :b@x.test\n", "aliases")
        self.assertEqual(targets(aliases.addresses["a@x.test"]), ["b@x.test"])


class ErrorTests(SynchronousTestCase):
    """
    Mistakes are reported as C{FILE:LINE: reason}, one line.
    """

    cases = [
        (b"  a@x.test\n", "1: continuation line (starting with white space) without an alias before it"),
        (
            b"# c\n\ta@x.test: b@x.test\n",
            "2: continuation line (starting with white space) without an alias before it",
        ),
        (b"a@x.test b@x.test\n", "1: missing ':' after the alias name"),
        (b"a@x.test\n", "1: missing ':' after the alias name"),
        (b": a@x.test\n", "1: missing alias name before ':'"),
        (b"a@x.test:\n", "1: alias 'a@x.test' has no targets"),
        (b"a@x.test:   # nothing\n\n", "1: alias 'a@x.test' has no targets"),
        (b"a@x.test: b@x.test,,c@x.test\n", "1: empty target (a stray ',')"),
        (b"a@x.test: b@x.test,\n", "1: empty target (a stray ',')"),
        (b"a@x.test: , b@x.test\n", "1: empty target (a stray ',')"),
        (b"a@x.test: |/usr/bin/vacation\n", "1: delivery to a command is not supported: '|/usr/bin/vacation'"),
        (b'a@x.test: "|/usr/bin/x y"\n', "1: delivery to a command is not supported: '\"|/usr/bin/x y\"'"),
        (b"a@x.test: /var/mail/a\n", "1: delivery to a file is not supported: '/var/mail/a'"),
        (b"a@x.test: :include:/etc/list\n", "1: :include: lists are not supported: ':include:/etc/list'"),
        (b"a@x.test: :INCLUDE:/etc/list\n", "1: :include: lists are not supported: ':INCLUDE:/etc/list'"),
        (b"a@x.test: bob\n", "1: target 'bob' is not a full address (local@domain)"),
        (b"a@x.test: @x.test\n", "1: target '@x.test' is not a full address (local@domain)"),
        (b"a@x.test: b@x.test c@x.test\n", "1: missing ',' between targets in 'b@x.test c@x.test'"),
        (b"a@x.test: b@x.test\n  c@x.test\n", "1: missing ',' between targets in 'b@x.test c@x.test'"),
        (b"a@x.test: b..c@x.test\n", "1: invalid target 'b..c@x.test': invalid local part"),
        (b"a@x.test: <b@x.test>\n", "1: invalid target '<b@x.test>': invalid local part"),
        (b"a@x.test: b@x-.test\n", "1: invalid target 'b@x-.test': invalid domain label 'x-'"),
        (b"a b: c@x.test\n", "1: invalid alias name 'a b': invalid local part"),
        (b"a@-x: c@x.test\n", "1: invalid alias name 'a@-x': invalid domain label '-x'"),
        (b"@: c@x.test\n", "1: invalid catch-all '@': empty domain"),
        (b"@x..test: c@x.test\n", "1: invalid catch-all '@x..test': invalid domain label ''"),
        (
            b"a@x.test: b@x.test\nA@X.TEST: c@x.test\n",
            "2: duplicate alias 'A@X.TEST' (first defined on line 1)",
        ),
        (b"abuse: b@x.test\n\n#\nAbuse: c@x.test\n", "4: duplicate alias 'Abuse' (first defined on line 1)"),
        (b"@x.test: b@x.test\n@X.test: c@x.test\n", "2: duplicate alias '@X.test' (first defined on line 1)"),
        (b'a@x.test: "b@x.test\n', "1: unterminated quoted string"),
        (b"a@x.test: b@x.test\n\xff: c@x.test\n", "2: line is not valid UTF-8"),
        (b"a@x.test: b@x.test,\n  c@x.test,\n  |cmd\n", "3: delivery to a command is not supported: '|cmd'"),
        (b"a@x.test: b@x.test,\n\n  ,c@x.test\n", "3: empty target (a stray ',')"),
    ]

    def test_messages(self):
        """
        Each mistake gives its exact message and line number.
        """
        for data, expected in self.cases:
            with self.subTest(data=data):
                error = self.assertRaises(AliasesFileError, parse_aliases, data, "/etc/mail/aliases")
                self.assertEqual(str(error), "/etc/mail/aliases:" + expected)
                self.assertEqual(error.path, "/etc/mail/aliases")
                self.assertEqual(error.line, int(expected.split(":")[0]))

    def test_no_line(self):
        """
        An error about the whole file has no line number.
        """
        error = AliasesFileError("/etc/mail/aliases", None, "cannot read the aliases file: Permission denied")
        self.assertEqual(str(error), "/etc/mail/aliases: cannot read the aliases file: Permission denied")
