"""Across PostgreSQL majors: the compression each pg_dump takes, the upgrade path
(an older backup into a newer server), the refusal the other way round, and
where a server keeps its data. Real servers of every image in PGRUNBOOK_TEST_IMAGES."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from helpers import MATRIX, NOT_APPLICABLE, PASSWORD, databases, last_line, start_postgres, table_fingerprints
from pgrunbook.infra.archive import read_header
from pgrunbook.infra.versions import RESTRICT_SINCE, header_algorithm, psql_knows_restrict

NEWER_FORMATS = ("gzip:1", "lz4", "zstd:1", "zstd:3")


def fresh_database(pg, sample: bool = True) -> str:
    name = f"v_{uuid.uuid4().hex[:8]}"
    pg.create_database(name, sample=sample)
    return name


def drop(pg, *names: str) -> None:
    for name in names:
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")


@pytest.fixture(scope="module")
def matrix(servers):
    """Every server of the matrix, oldest first."""
    return sorted((servers(image) for image in MATRIX), key=lambda server: server.major)


@pytest.mark.matrix
def test_every_compression_the_server_takes_backs_up_verifies_and_restores(cli, pg):
    live = fresh_database(pg)
    try:
        cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=live, DB_PASSWORD=PASSWORD)
        default = cli("backup", "--env=prod")
        assert default.returncode == 0, default.stderr
        manifest = json.loads(Path(last_line(default.stdout) + ".json").read_text())
        expected = "lz4" if pg.major >= 16 else "1"
        assert manifest["compression"] == expected
        assert manifest["compression_chosen_by"] == f"default for PostgreSQL {pg.major}"
        assert read_header(Path(last_line(default.stdout))).compression == \
            ("lz4" if pg.major >= 16 else "gzip:1")
        formats = NEWER_FORMATS if pg.major >= 16 else ("0", "6")
        for spec in formats:
            cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=live, DB_PASSWORD=PASSWORD,
                          DUMP_COMPRESSION=spec)
            made = cli("backup", "--env=prod")
            assert made.returncode == 0, made.stderr
            path = Path(last_line(made.stdout))
            manifest = json.loads(Path(str(path) + ".json").read_text())
            assert (manifest["compression"], manifest["compression_chosen_by"]) == (spec, "DUMP_COMPRESSION")
            assert read_header(path).compression.split(":")[0] == header_algorithm(spec), spec
            verified = cli("verify", "--env=prod", f"--file={path}", env={"PGRUNBOOK_VERBOSE": "1"})
            assert verified.returncode == 0, verified.stderr
            assert "OK  readable" in verified.stderr  # read to the end
            tested = cli("verify", "--env=prod", f"--file={path}", "--restore-test")
            assert tested.returncode == 0, tested.stderr
        if pg.major < 16:  # a format of 16+ on an older pg_dump: one clear line, nothing written
            before = sorted(p.name for p in cli.backup_dir("prod").iterdir())
            cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=live, DB_PASSWORD=PASSWORD,
                          DUMP_COMPRESSION="lz4")
            refused = cli("backup", "--env=prod")
            assert refused.returncode == 1
            assert "PostgreSQL 16 以降" in refused.stderr and pg.version in refused.stderr
            assert "Traceback" not in refused.stderr
            after = sorted(p.name for p in cli.backup_dir("prod").iterdir())
            assert after == before
    finally:
        drop(pg, live)


def test_an_older_backup_restores_into_every_newer_server(cli, matrix):
    """The way to move majors: back up on the old server, restore on the new one."""
    oldest, newer = matrix[0], [server for server in matrix if server.major > matrix[0].major]
    if not newer:
        pytest.skip(NOT_APPLICABLE + "PGRUNBOOK_TEST_IMAGES holds one PostgreSQL major only")
    source = fresh_database(oldest)
    try:
        cli.write_env("prod", DB_CONTAINER=oldest.name, DB_NAME=source, DB_PASSWORD=PASSWORD)
        dump = cli("backup", "--env=prod")
        sql = cli("backup-sql", "--env=prod")
        assert dump.returncode == 0 and sql.returncode == 0, dump.stderr + sql.stderr
        expected = table_fingerprints(oldest, source)
        for server in newer:
            # the new server's own empty database, as its POSTGRES_DB would be
            live = fresh_database(server, sample=False)
            try:
                cli.write_env("prod", DB_CONTAINER=server.name, DB_NAME=live, DB_PASSWORD=PASSWORD)
                replaced = cli("restore-replace", "--env=prod", f"--file={last_line(dump.stdout)}",
                               "--confirm=prod")
                assert replaced.returncode == 0, f"{server.image}: {replaced.stderr}"
                assert table_fingerprints(server, live) == expected, server.image
                scratch = cli("restore-scratch", "--env=prod", f"--file={last_line(sql.stdout)}",
                              f"--db={live}_sql")
                assert scratch.returncode == 0, f"{server.image}: {scratch.stderr}"
                assert table_fingerprints(server, f"{live}_sql") == expected, server.image
                # the checks after the move (runbooks/restore.md): a backup on the new
                # server and its restore test
                again = cli("backup", "--env=prod")
                # another cluster than the previous good backup's, but the one the kit's
                # restore-replace swapped in (logged): not suspect, as the upgrade section says
                assert again.returncode == 0, again.stderr
                moved = json.loads(Path(last_line(again.stdout) + ".json").read_text())
                assert moved["drift"]["identity_change_explained_by"].startswith("restore-replace")
                assert moved["server_version"].split()[0] == server.version
                tested = cli("verify", "--env=prod", "--restore-test")
                assert tested.returncode == 0, tested.stderr
            finally:
                drop(server, *[d for d in databases(server) if d.startswith(live)])
    finally:
        drop(oldest, source)


def test_a_newer_dump_is_refused_by_an_older_server_before_anything_is_created(cli, matrix):
    newest, older = matrix[-1], [server for server in matrix if server.major < matrix[-1].major]
    if not older:
        pytest.skip(NOT_APPLICABLE + "PGRUNBOOK_TEST_IMAGES holds one PostgreSQL major only")
    source = fresh_database(newest)
    try:
        cli.write_env("prod", DB_CONTAINER=newest.name, DB_NAME=source, DB_PASSWORD=PASSWORD)
        files = [last_line(cli(task, "--env=prod").stdout) for task in ("backup", "backup-sql")]
        assert all(os.path.exists(file) for file in files), files
        for server in older:
            live = fresh_database(server)
            try:
                before = table_fingerprints(server, live)
                present = databases(server)
                cli.write_env("prod", DB_CONTAINER=server.name, DB_NAME=live, DB_PASSWORD=PASSWORD)
                for file in files:
                    for args in (["restore-scratch"], ["restore-replace", "--confirm=prod"],
                                 ["verify", "--restore-test"]):
                        done = cli(*args, "--env=prod", f"--file={file}")
                        what = f"{args[0]} {Path(file).suffix} from {newest.version} into {server.version}"
                        assert done.returncode == 1, f"{what}: {done.stderr}"
                        error = done.stderr
                        assert newest.version in error and server.version in error, f"{what}: {error}"
                        assert f"PostgreSQL {newest.major} 以上" in error, f"{what}: {error}"
                        assert "Traceback" not in error and "ERROR:" not in error, f"{what}: {error}"
                assert databases(server) == present  # nothing created, nothing left
                assert table_fingerprints(server, live) == before
            finally:
                drop(server, live)
    finally:
        drop(newest, source)


def test_the_free_space_check_looks_where_the_server_keeps_its_data(cli, docker_engine, matrix, tmp_path):
    """PostgreSQL 18's official image keeps its data in /var/lib/postgresql/18/docker:
    the check must ask the server (data_directory), not assume a path. Here the data
    lives on a small tmpfs of its own; the container's root disk has room to spare."""
    newest = matrix[-1]
    data = f"/var/lib/postgresql/{newest.major}/docker"
    server = start_postgres(docker_engine, f"pgrunbook-test-datadir-{uuid.uuid4().hex[:6]}",
                            image=newest.image, environment={"PGDATA": data},
                            tmpfs={data: "size=160m"})
    try:
        assert server.psql("SHOW data_directory", "postgres").strip() == data
        server.create_database("app", sample=True)
        cli.write_env("prod", DB_CONTAINER=server.name, DB_NAME="app", DB_PASSWORD=PASSWORD)
        dump = cli("backup", "--env=prod")
        assert dump.returncode == 0, dump.stderr
        # 40 MiB on paper (sparse): a new database estimated at 5 × that cannot fit in
        # the data directory's 160 MiB, while / has far more than that free
        big = Path(last_line(dump.stdout)).with_name("knot-prod-20200105.dump")
        big.write_bytes(Path(last_line(dump.stdout)).read_bytes())
        os.truncate(big, 40 * 1024 * 1024)
        _, free, _ = server.exec(["df", "-Pk", "/"])
        assert int(free.decode().splitlines()[1].split()[3]) * 1024 > 400 * 1024 * 1024
        cli.write_env("prod", DB_CONTAINER=server.name, DB_NAME="absent", DB_PASSWORD=PASSWORD)
        refused = cli("restore-scratch", "--env=prod", f"--file={big}", "--db=big", "--jobs=1")
        assert refused.returncode == 1 and "ディスクの空きが足りません" in refused.stderr, refused.stderr
        assert "big" not in databases(server)
    finally:
        server.container.remove(force=True, v=True)


def test_a_sql_dump_with_restrict_is_refused_by_a_psql_that_does_not_know_it(cli, matrix):
    """pg_dump 13.22 / 14.19 / 15.14 / 16.10 / 17.6 and later write ``\\restrict`` at the top of a
    plain dump; an older psql of the same major stops on that first line. The refusal must
    come before anything is created, and say what to do (not "the file may be broken")."""
    old = [server for server in matrix if not psql_knows_restrict(server.version)]
    if not old:
        pytest.skip(NOT_APPLICABLE + "every psql of the matrix knows \\restrict")
    server = old[0]
    live = fresh_database(server)
    try:
        cli.write_env("prod", DB_CONTAINER=server.name, DB_NAME=live, DB_PASSWORD=PASSWORD)
        made = cli("backup-sql", "--env=prod")
        assert made.returncode == 0, made.stderr
        text = Path(last_line(made.stdout)).read_text(encoding="utf-8")
        major = server.major
        newer_minor = f"{major}.{RESTRICT_SINCE[major]}"
        # what the same major's newer minor writes: the key line first, \unrestrict last
        text = text.replace(f"pg_dump version {server.version}", f"pg_dump version {newer_minor}")
        text = text.replace("--\n-- PostgreSQL database dump\n--\n",
                            "--\n-- PostgreSQL database dump\n--\n\n\\restrict Zk3Yp0aVbq\n", 1)
        text += "\n\\unrestrict Zk3Yp0aVbq\n"
        crafted = cli.backup_dir("prod") / "knot-prod-20200106.sql"
        crafted.write_text(text, encoding="utf-8")
        present = databases(server)
        done = cli("restore-scratch", "--env=prod", f"--file={crafted}", f"--db={live}_r")
        assert done.returncode == 1
        assert databases(server) == present
        assert "\\restrict" in done.stderr and newer_minor in done.stderr and server.version in done.stderr
        assert "壊れていないか" not in done.stderr, done.stderr
    finally:
        drop(server, live, f"{live}_r")
