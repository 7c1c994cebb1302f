"""SQL literals and identifiers the kit builds: safe whatever the server's
standard_conforming_strings says (a DBA or an old app may set it off)."""

from __future__ import annotations

from pgrunbook.infra.postgres import quote_ident, quote_label, quote_literal


def test_plain_values_are_standard_literals():
    assert quote_literal("app") == "'app'"
    assert quote_literal("knot's") == "'knot''s'"
    assert quote_ident('we"ird') == '"we""ird"'


def test_a_backslash_makes_an_escape_string_that_means_the_same_on_both_settings():
    # under standard_conforming_strings=off, '\' escapes in a plain literal: 'x\' would
    # swallow the closing quote and \' would end the literal early (a way out of it)
    assert quote_literal("C:\\data") == "E'C:\\\\data'"
    assert quote_literal("\\'; DROP TABLE t; --") == "E'\\\\''; DROP TABLE t; --'"
    assert quote_literal("tail\\") == "E'tail\\\\'"


def test_an_escape_string_reads_back_as_the_value():
    """What the server does with E'...': a backslash escapes the next character and
    '' is one quote (the reader below follows the scanner's rules for these)."""
    for value in ["C:\\data\\app's", "\\'; --", "\\\\", "end\\", "plain", "ｔｏｋｙｏ\\東京"]:
        literal = quote_literal(value)
        assert read_literal(literal) == value, literal


def read_literal(literal: str) -> str:
    escape = literal.startswith("E'")
    body = literal[2:-1] if escape else literal[1:-1]
    out, i = [], 0
    while i < len(body):
        char = body[i]
        if escape and char == "\\":
            out.append(body[i + 1])
            i += 2
        elif char == "'":
            assert body[i + 1] == "'", literal  # a lone quote would end the literal
            out.append("'")
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def test_a_table_label_is_quoted_part_by_part_at_its_first_dot():
    assert quote_label("public.votes") == '"public"."votes"'
    assert quote_label('会計."承認".v2') == '"会計"."""承認"".v2"'
