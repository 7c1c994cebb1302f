"""The restore itself: the archive into an empty kit database (pg_restore or psql), free space."""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from pgrunbook.console import Console, human_size
from pgrunbook.errors import RunbookError
from pgrunbook.postgres import (
    Postgres,
    ServerFacts,
)
from pgrunbook.restore.source import Source, check_digest
from pgrunbook.settings import Settings
from pgrunbook.verify import Digest


@dataclass
class RestoreOptions:
    no_owner: bool | None = None  # None: what the backup's manifest asked for
    no_acl: bool = False
    jobs: int | None = None


@contextlib.contextmanager
def file_in_container(pg: Postgres, source: Source, digest: Digest) -> Iterator[str]:
    """Place the archive inside the container (needed by pg_restore -j) in a
    private directory the same upload creates; removed after (after a success,
    on a thread of its own while the caller goes on; the process waits for it)."""
    private = f"pgrunbook-{uuid.uuid4().hex[:12]}"

    def remove() -> None:
        with contextlib.suppress(Exception):  # never hides the restore's own outcome
            pg.container.run(["rm", "-rf", f"/tmp/{private}"])

    try:
        yield pg.container.put_file(source.path, "/tmp", f"{private}/{source.path.name}",
                                    chunks=digest.chunks())
    except BaseException:
        remove()
        raise
    threading.Thread(target=remove, name="remove-archive").start()


def check_free_space(pg: Postgres, facts: ServerFacts, source: Source, archive_inside: bool) -> None:
    """Refuse a restore the container's disk cannot hold: a full disk would also
    stop the live cluster (its WAL lives there). Skipped when the server does not
    tell where its data lives (no pg_read_all_settings)."""
    data_directory = facts.data_directory
    if not data_directory:
        return
    live = facts.database.size if facts.database else None
    needed_data = live if live is not None else source.size * 5  # no live DB (size): a rough guess
    places = [data_directory] + (["/tmp"] if archive_inside else [])
    try:
        result = pg.container.run(["df", "-Pk", *places])
    except RunbookError:  # no df in the image: the check is skipped, as without privileges
        return
    if not result.ok:
        return
    rows = [line.split() for line in result.stdout.decode().splitlines()[1:] if line.strip()]
    if len(rows) != len(places):
        return
    needs: dict[str, int] = {}
    free: dict[str, int] = {}
    for row, need in zip(rows, [needed_data, source.size][: len(rows)], strict=True):
        filesystem = row[0] + row[-1]
        needs[filesystem] = needs.get(filesystem, 0) + need
        free[filesystem] = int(row[3]) * 1024
    for filesystem, need in needs.items():
        if free[filesystem] < need * 1.1:
            raise RunbookError(
                f"コンテナのディスクの空きが足りません（必要 約 {human_size(need)}、"
                f"空き {human_size(free[filesystem])}）。満杯になると稼働中の DB も止まるため中止しました",
                "不要な DB（invoke restore-list）や古いファイルを消して空きを作る"
                + ("。--jobs=1 ならアーカイブをコンテナに置きません" if archive_inside else ""),
            )


def restore_into(
    pg: Postgres, settings: Settings, source: Source, database: str, options: RestoreOptions,
    console: Console, facts: ServerFacts,
) -> str:
    """Restore the file into an existing empty database; raise on any error.

    Returns the sha256 of the bytes restored (hashed on the way); the caller
    compares it with the record before the result is used."""
    digest = Digest(source.path)
    started = time.monotonic()
    if source.format == "plain":
        check_free_space(pg, facts, source, archive_inside=False)
        console.step(f"psql（ON_ERROR_STOP、単一トランザクション）で {database} に復元")
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                "-U", settings.db_user, "-d", database]
        result = pg.run(argv, stdin=digest.chunks(), on_stdout=lambda _data: None)
    else:
        no_owner = options.no_owner
        if no_owner is None:
            no_owner = bool((source.manifest or {}).get("options", {}).get("no_owner"))
        argv = ["pg_restore", "--exit-on-error", "-U", settings.db_user, "-d", database]
        if no_owner:
            argv.append("--no-owner")
        if options.no_acl:
            argv.append("--no-acl")
        jobs = options.jobs or pg.container.cpu_count()
        check_free_space(pg, facts, source, archive_inside=jobs > 1)
        if jobs > 1:
            with file_in_container(pg, source, digest) as inside:
                console.step(f"pg_restore -j {jobs} で {database} に復元")
                result = pg.run(argv + ["-j", str(jobs), inside])
        else:
            console.step(f"pg_restore で {database} に復元")
            result = pg.run(argv, stdin=digest.chunks())
    if not result.ok:
        check_digest(source, digest.hexdigest())  # a damaged file: say so, not just "failed"
        text = result.error_text()
        hint = "ファイルが壊れていないか invoke verify で確認"
        if re.search(r'role "[^"]+" does not exist|must be owner|permission denied', result.stderr):
            hint = "役割（ロール）の差による権限エラーです。--no-owner --no-acl を付けて再実行"
        raise RunbookError(f"復元に失敗しました（{database}）: {text}", hint)
    console.step(f"復元完了（{time.monotonic() - started:.1f} 秒）")
    sha256 = digest.hexdigest()
    check_digest(source, sha256)
    return sha256
