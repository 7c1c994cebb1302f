"""restore-replace and default privileges (ALTER DEFAULT PRIVILEGES, pg_default_acl).

An app whose migrations create tables later relies on them: "every table app
creates in public is readable by the reporting role". A replace must not drop
them silently. A --no-acl archive gets them copied from the live database (as
the objects' own privileges are); an archive that lacks one added after the
backup is refused, the live database untouched.
"""

from __future__ import annotations

import uuid

from helpers import backup


def default_acl(pg, database: str) -> list[str]:
    return pg.psql(
        "SELECT defaclrole::regrole::text || ' ' || coalesce(nullif(defaclnamespace, 0)::regnamespace::text, '*')"
        " || ' ' || defaclobjtype::text || ' ' || (SELECT string_agg(a::text, ',' ORDER BY a::text)"
        "                                    FROM unnest(defaclacl) a)"
        " FROM pg_default_acl ORDER BY 1", database).splitlines()


def test_default_privileges_are_copied_from_live_or_the_replace_is_refused(cli, pg, target):
    reader = f"Report Reader {uuid.uuid4().hex[:6]}"  # capitals and a space: quoted everywhere
    pg.psql(f'CREATE ROLE "{reader}" NOLOGIN', "postgres")
    pg.psql(f'ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO "{reader}"',
            target)
    pg.psql("ALTER DEFAULT PRIVILEGES FOR ROLE app REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC", target)
    pg.psql(f'ALTER DEFAULT PRIVILEGES FOR ROLE app GRANT USAGE ON SEQUENCES TO "{reader}" '
            "WITH GRANT OPTION", target)
    before = default_acl(pg, target)
    assert len(before) == 3, before

    # an archive without privileges: the live database's default privileges are copied
    dump = backup(cli, "--env=prod", "--no-acl")
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert replaced.returncode == 0, replaced.stderr
    assert default_acl(pg, target) == before
    pg.psql("CREATE TABLE public.made_later (id int)", target)  # what the app's next migration does
    assert pg.psql(f"SELECT has_table_privilege('{reader}', 'public.made_later', 'SELECT')",
                   target).strip() == "t"

    # an archive with privileges, but a default privilege was added after it was taken
    dump = backup(cli, "--env=prod")
    pg.psql(f'ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT INSERT ON TABLES TO "{reader}"',
            target)
    now = default_acl(pg, target)
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1, refused.stderr
    assert "既定の権限" in refused.stderr and reader in refused.stderr and "INSERT" in refused.stderr, \
        refused.stderr
    assert "Traceback" not in refused.stderr
    assert default_acl(pg, target) == now  # the live database as it was
    assert pg.psql("SELECT count(*) FROM public.made_later", target).strip() == "0"

    # the archive as it is, on purpose: the operator accepts the change, which is logged
    accepted = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                   "--accept-privilege-changes")
    assert accepted.returncode == 0, accepted.stderr
    assert default_acl(pg, target) == before


def large_objects(pg, database: str) -> list[str]:
    return pg.psql("SELECT oid::text || ' ' || pg_get_userbyid(lomowner) || ' ' || coalesce("
                   "(SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(lomacl) a), '-')"
                   " FROM pg_largeobject_metadata ORDER BY oid", database).splitlines()


def test_large_objects_keep_their_owners_and_grants(cli, pg, target):
    """Large objects (lo_create, pg_largeobject_metadata) have an owner and grants of
    their own; an app reading them as another role gets permission denied without them."""
    suffix = uuid.uuid4().hex[:6]
    owner, reader = f"lo_owner_{suffix}", f"LO Reader {suffix}"
    pg.psql(f'CREATE ROLE "{owner}" NOLOGIN; CREATE ROLE "{reader}" NOLOGIN', "postgres")
    oid = pg.psql("SELECT lo_from_bytea(0, 'scanned contract'::bytea)", target).strip()
    pg.psql(f'ALTER LARGE OBJECT {oid} OWNER TO "{owner}"; '
            f'GRANT SELECT ON LARGE OBJECT {oid} TO "{reader}"', target)
    before = large_objects(pg, target)
    assert owner in before[0] and reader in before[0], before

    # no owners, no privileges in the archive: both are copied from the live database
    dump = backup(cli, "--env=prod", "--no-owner", "--no-acl")
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert replaced.returncode == 0, replaced.stderr
    assert large_objects(pg, target) == before

    # a grant made after the backup is a difference like any other
    dump = backup(cli, "--env=prod")
    pg.psql(f'GRANT UPDATE ON LARGE OBJECT {oid} TO "{reader}"', target)
    now = large_objects(pg, target)
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1, refused.stderr
    assert f"LARGE OBJECT {oid}" in refused.stderr and "UPDATE" in refused.stderr, refused.stderr
    assert large_objects(pg, target) == now
