from pgrunbook.restore.sqlfilter import without_owner_and_acl

SQL = b"""CREATE TABLE public.t (id int, note text);
ALTER TABLE public.t OWNER TO other;
CREATE FUNCTION public.f() RETURNS void LANGUAGE plpgsql AS $body$
BEGIN
GRANT SELECT ON public.t TO other;
END $body$;
ALTER FUNCTION public.f() OWNER TO other;
COPY public.t (id, note) FROM stdin;
1	ALTER TABLE public.t OWNER TO other;
2	GRANT SELECT ON public.t TO x;
\\.
GRANT SELECT ON TABLE public.t TO other;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE other GRANT SELECT ON TABLES TO x;
"""


def run(owners, acl, size=7):
    chunks = [SQL[i:i + size] for i in range(0, len(SQL), size)]
    return b"".join(without_owner_and_acl(chunks, owners=owners, acl=acl)).decode()


def test_owner_and_acl_statements_go_data_and_bodies_stay():
    out = run(owners=True, acl=True)
    assert "ALTER TABLE public.t OWNER TO other;\nCREATE FUNCTION" not in out
    assert "ALTER FUNCTION public.f() OWNER TO other" not in out
    assert "GRANT SELECT ON TABLE public.t TO other" not in out
    assert "REVOKE ALL ON SCHEMA" not in out and "ALTER DEFAULT PRIVILEGES" not in out
    assert "1\tALTER TABLE public.t OWNER TO other;" in out  # a row, not a statement
    assert "GRANT SELECT ON public.t TO other;\nEND" in out  # inside the function body
    assert out.count("\n") == SQL.count(b"\n") - 5


def test_each_option_alone():
    owners_only = run(owners=True, acl=False)
    assert "GRANT SELECT ON TABLE public.t TO other" in owners_only
    assert "ALTER FUNCTION public.f() OWNER TO other" not in owners_only
    acl_only = run(owners=False, acl=True, size=1000)
    assert "ALTER FUNCTION public.f() OWNER TO other" in acl_only
    assert "GRANT SELECT ON TABLE public.t TO other" not in acl_only


def strip(sql: bytes, size: int = 5) -> str:
    chunks = [sql[i:i + size] for i in range(0, len(sql), size)]
    return b"".join(without_owner_and_acl(chunks, owners=True, acl=True)).decode()


def test_dollar_signs_in_strings_and_identifiers_open_no_dollar_quote():
    sql = (b"\\restrict Zq8k\n"
           b"SET standard_conforming_strings = on;\n"
           b"CREATE TABLE public.\"price$usd$x\" (note text DEFAULT 'costs $$'::text);\n"
           b"COMMENT ON TABLE public.\"price$usd$x\" IS E'it\\'s $$ too';\n"
           b"CREATE TABLE public.a$b$c (id int);\n"
           b"ALTER TABLE public.a$b$c OWNER TO other;\n"
           b"GRANT SELECT ON TABLE public.\"price$usd$x\" TO other;\n"
           b"\\unrestrict Zq8k\n")
    out = strip(sql)
    assert "OWNER TO other" not in out and "GRANT SELECT" not in out, out
    assert out.startswith("\\restrict Zq8k\n") and out.endswith("\\unrestrict Zq8k\n")
    assert out.count("\n") == sql.count(b"\n") - 2


def test_lines_inside_a_string_that_spans_lines_are_data():
    sql = (b"COMMENT ON TABLE public.t IS 'Access for reporting:\n"
           b"GRANT SELECT ON public.t TO reporting;\n"
           b"ALTER TABLE public.t OWNER TO nobody;';\n"
           b"INSERT INTO public.t VALUES (1, 'a -- not a comment', \"x\"\"y\");\n"
           b"/* a block comment\n"
           b"GRANT ALL ON public.t TO PUBLIC;\n"
           b"*/\n"
           b"ALTER TABLE public.t OWNER TO other;\n")
    out = strip(sql, size=3)
    assert "GRANT SELECT ON public.t TO reporting;\n" in out
    assert "ALTER TABLE public.t OWNER TO nobody;';" in out
    assert "GRANT ALL ON public.t TO PUBLIC;" in out
    assert "OWNER TO other" not in out
