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
