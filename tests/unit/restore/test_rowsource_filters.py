"""Which parts of a backup a partial restore reads (TOC list, .sql sections), the
tables' foreign-key order and the undo file's round trip, pure."""

from __future__ import annotations

from pgrunbook.core.files import private_file
from pgrunbook.restore.putback import UndoWriter, read_undo
from pgrunbook.restore.rowsource import filtered_listing, keep_definition, parse_toc_line, sql_sections
from pgrunbook.restore.tables import Catalog, Column, ForeignKey, Table, parse_table_name

LISTING = """;
; Archive created at 2026-12-06 15:47:22 UTC
6; 2615 16385 SCHEMA - accounting app
222; 1259 16416 TABLE accounting approvals app
221; 1259 16415 SEQUENCE accounting approvals_id_seq app
3420; 0 0 SEQUENCE OWNED BY accounting approvals_id_seq app
217; 1259 16388 TABLE public members app
224; 1259 16436 TABLE public votes app
3232; 2604 16439 DEFAULT public votes id app
3408; 0 16416 TABLE DATA accounting approvals app
3403; 0 16388 TABLE DATA public members app
3410; 0 16436 TABLE DATA public votes app
3430; 0 0 SEQUENCE SET public votes_id_seq app
3241; 2606 16395 CONSTRAINT public members members_pkey app
3247; 2606 16443 CONSTRAINT public votes votes_pkey app
3248; 1259 16444 INDEX public votes_topic app
3257; 2606 16446 FK CONSTRAINT public votes votes_member_id_fkey app
3258; 0 0 ACL public votes app
"""


def test_the_list_keeps_definitions_and_only_the_named_tables_rows_and_keys():
    chosen, found = filtered_listing(LISTING, {"public.votes"})
    kept = [parse_toc_line(line)[:3] for line in chosen.splitlines()]
    assert ("TABLE DATA", "public", "votes") in kept
    assert ("TABLE DATA", "public", "members") not in kept  # another table's rows
    assert {kind for kind, _s, _t in kept} == {"SCHEMA", "TABLE", "SEQUENCE", "SEQUENCE OWNED BY", "DEFAULT",
                                              "TABLE DATA"}  # no key, FK, index, ACL, SEQUENCE SET
    assert found == {"public.votes"}
    assert parse_toc_line("; Archive created at 2026") is None


SQL = b"""SET statement_timeout = 0;
\\restrict abc

--
-- Name: members; Type: TABLE; Schema: public; Owner: app
--

CREATE TABLE public.members (id int);

SET default_tablespace = '';

--
-- Data for Name: members; Type: TABLE DATA; Schema: public; Owner: app
--

COPY public.members (id) FROM stdin;
1
-- Name: fake; Type: TABLE DATA; Schema: public; Owner: app
\\.

--
-- Data for Name: votes; Type: TABLE DATA; Schema: public; Owner: app
--

COPY public.votes (id) FROM stdin;
7
-- Name: x; Type: ACL; Schema: public; Owner: app
8
\\.

--
-- Name: votes_id_seq; Type: SEQUENCE SET; Schema: public; Owner: app
--

SELECT pg_catalog.setval('public.votes_id_seq', 120, true);

--
-- Name: votes votes_pkey; Type: CONSTRAINT; Schema: public; Owner: app
--

ALTER TABLE ONLY public.votes ADD CONSTRAINT votes_pkey PRIMARY KEY (id);

\\unrestrict abc
"""


def test_sql_sections_pass_only_the_named_tables_rows_whatever_the_data_holds():
    found: set[str] = set()
    # fed in awkward pieces: a line may be cut anywhere
    chunks = [SQL[i:i + 7] for i in range(0, len(SQL), 7)]
    kept = b"".join(sql_sections(chunks, {"public.votes"}, found)).decode()
    assert "CREATE TABLE public.members" in kept and "COPY public.votes" in kept and "\n7\n" in kept
    assert "\n8\n" in kept  # a row of the kept data that reads like a header is a row
    assert "COPY public.members" not in kept and "\n1\n" not in kept  # a data line like a header changes nothing
    assert "setval" not in kept and "ADD CONSTRAINT votes_pkey" not in kept
    assert "\\restrict abc" in kept and "\\unrestrict abc" in kept and "SET default_tablespace" in kept
    assert found == {"public.votes"}
    schema = b"".join(sql_sections([SQL], set(), set(), keep_definition)).decode()
    assert "COPY" not in schema and "setval" not in schema and "ADD CONSTRAINT" in schema


def table(oid: int, name: str, parents: tuple[int, ...] = ()) -> Table:
    keys = tuple(ForeignKey(f"fk{p}", ("p",), p, ("id",)) for p in parents)
    return Table(oid, "public", name, "app", True, (Column("id", "integer"),), ("id",), keys)


def test_parents_first_and_the_reach_of_foreign_keys():
    catalog = Catalog({1: table(1, "members"), 2: table(2, "entries", (1,)), 3: table(3, "approvals", (2, 1)),
                       4: table(4, "other"), 5: table(5, "tree", (5,))})
    assert catalog.parents_first({3, 2, 1}) == [1, 2, 3]
    assert sorted(catalog.parents_closure([3])) == [1, 2, 3]
    assert catalog.parents_first({5}) == [5]  # a table that references itself
    assert [t.name for t, _fk in catalog.children_of(1)] == ["entries", "approvals"]
    assert parse_table_name("votes") == "public.votes" and parse_table_name("audit.audit_log") == "audit.audit_log"
    # names that need quotes in SQL: as the catalog spells them, or in psql's double quotes
    assert parse_table_name("寄付") == "public.寄付" and parse_table_name("public.Members") == "public.Members"
    assert parse_table_name('public."会員 名簿"') == "public.会員 名簿"
    assert parse_table_name('"Sales"."a""b"') == 'Sales.a"b'


def test_the_undo_file_round_trip(tmp_path):
    path = tmp_path / "run.undo"
    with private_file(path) as handle:
        writer = UndoWriter(handle, {"run": "r1", "tables": []})
        writer.section(1, "before", iter([b"1\t\\\\section\tx", b"2\t\\N\ty"]))
        writer.section(1, "written", iter([b"3\tins\t42"]))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    undo = read_undo(path)
    assert undo.header["run"] == "r1"
    assert [(index, kind, list(lines)) for index, kind, lines in undo.sections()] == [
        (1, "before", [b"1\t\\\\section\tx\n", b"2\t\\N\ty\n"]), (1, "written", [b"3\tins\t42\n"])]


def test_names_with_blanks_dots_and_other_letters_are_read_and_found_in_the_list():
    assert parse_table_name("会議録") == "public.会議録"
    assert parse_table_name('"My Schema"."Odd.Name"') == "My Schema.Odd.Name"
    assert parse_table_name('public."say ""hi"""') == 'public.say "hi"'
    listing = ("215; 1259 16389 TABLE My Schema Odd.Name app\n"
               "217; 1259 16395 TABLE public with space app owner\n"
               "3347; 0 16389 TABLE DATA My Schema Odd.Name app\n"
               "3349; 0 16395 TABLE DATA public with space app owner\n"
               "3350; 0 16396 TABLE DATA public with app owner\n")
    chosen, found = filtered_listing(listing, {"My Schema.Odd.Name", "public.with space", "public.with"})
    assert found == {"My Schema.Odd.Name", "public.with space", "public.with"}
    assert len(chosen.splitlines()) == 5
    _chosen, found = filtered_listing(listing, {"public.with space"})
    assert found == {"public.with space"}
