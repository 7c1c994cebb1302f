"""Values the kit writes into SQL on a server where standard_conforming_strings is
off (an old app's setting, here the kit user's own): a backslash in the live
database's comment or in a database-level setting must neither break the swap
nor change the value."""

from __future__ import annotations

import uuid

from helpers import PASSWORD, backup, comment_of, role


def test_backslashes_survive_a_replace_with_standard_conforming_strings_off(cli, pg, target):
    kit = role(pg, f"kit_{uuid.uuid4().hex[:6]}", f"LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    pg.psql(f'ALTER ROLE "{kit}" SET standard_conforming_strings = off', "postgres")
    comment = "C:\\knot\\app's data \\'; --"
    pg.psql(f'COMMENT ON DATABASE "{target}" IS $c${comment}$c$', "postgres")
    pg.psql(f'ALTER DATABASE "{target}" SET application_name = $v$knot\\web$v$', "postgres")
    setting_sql = ("SELECT array_to_string(setconfig, ';') FROM pg_db_role_setting s "
                   f"JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{target}'")
    before = pg.psql(setting_sql, "postgres").strip()
    assert before == "application_name=knot\\web"
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_USER=kit, DB_PASSWORD=PASSWORD)
    dump = backup(cli, "--env=prod")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert result.returncode == 0, result.stderr
    assert comment_of(pg, target) == comment
    assert pg.psql(setting_sql, "postgres").strip() == before
