"""The restore itself: the archive into an empty kit database (pg_restore or psql), free space."""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pgrunbook.core import faults
from pgrunbook.core.console import Console, human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import HashingReader
from pgrunbook.core.settings import Settings
from pgrunbook.infra import versions
from pgrunbook.infra.archive import major_version
from pgrunbook.infra.container import MissingCommand
from pgrunbook.infra.postgres import (
    Postgres,
    ServerFacts,
)
from pgrunbook.restore.source import Source, check_digest
from pgrunbook.restore.sqlfilter import without_owner_and_acl

OWNERSHIP = ("auto", "archive", "live", "restorer")


@dataclass
class RestoreOptions:
    """``ownership``: whose objects the restored database's are.
    archive: as the archive says (pg_restore's default); restorer: all DB_USER's
    (pg_restore --no-owner); live: as in the live database (a replace only:
    restored --no-owner, then the live owners copied); auto: archive when the
    archive carries owners, else live for a replace and restorer elsewhere."""

    ownership: str = "auto"
    no_acl: bool = False
    jobs: int | None = None
    accept_privilege_changes: bool = False
    accept_shrink: bool = False  # restore-replace: data far smaller than the live DB's is intended
    prestaged: bool = True  # restore-replace: claim a prestaged database of the file (prestage.py)

    def archive_has_owners(self, source: Source) -> bool:
        return not (source.manifest or {}).get("options", {}).get("no_owner")

    def archive_has_acl(self, source: Source) -> bool:
        return not (source.manifest or {}).get("options", {}).get("no_acl")

    def resolved_ownership(self, source: Source, replace: bool) -> str:
        if self.ownership != "auto":
            return self.ownership
        if self.archive_has_owners(source):
            return "archive"
        return "live" if replace else "restorer"

    def restores_owners(self, source: Source, replace: bool) -> bool:
        return self.resolved_ownership(source, replace) == "archive"


def default_jobs(cpus: int) -> int:
    """The staging restore shares the server with the live database, which keeps
    serving the app until the swap: half of the container's CPUs, at most 4 (on 2
    CPUs one pg_restore, as the hand procedure's: runbooks/performance.md#cores)."""
    return max(1, min(4, cpus // 2))


@contextlib.contextmanager
def file_in_container(pg: Postgres, source: Source, digest: HashingReader,
                      on_upload: Callable[[str], None] | None = None) -> Iterator[str]:
    """Place the archive inside the container (pg_restore reads a file: archive_streams) in a
    private directory the same upload creates; removed after (after a success,
    on a thread of its own while the caller goes on; the process waits for it)."""
    private = upload_prefix(pg.settings.env) + uuid.uuid4().hex[:12]

    def remove() -> None:
        with contextlib.suppress(Exception):  # never hides the restore's own outcome
            pg.container.run(["rm", "-rf", f"/tmp/{private}"])

    try:
        if on_upload:
            on_upload(f"/tmp/{private}")
        inside = pg.container.put_file(source.path, "/tmp", f"{private}/{source.path.name}",
                                       chunks=digest.chunks())
        faults.kill_point("upload")
        yield inside
    except BaseException:
        remove()
        raise
    threading.Thread(target=remove, name="remove-archive").start()


def upload_prefix(env: str) -> str:
    """Uploads carry their env: a recovery removes only its own env's."""
    return f"pgrunbook-upload-{env}-"


def archive_streams(pg: Postgres, facts: ServerFacts, source: Source, jobs: int) -> bool:
    """Does pg_restore read the archive from its stdin (True) rather than from a copy
    placed in the container first, as the hand procedure's ``docker cp`` does (False)?

    A copy, whenever the container's disk holds it beside the restored data: fed
    through the engine's exec socket, pg_restore waits on a pipe that three processes
    (the kit, dockerd, the runtime's shim) must keep full, and on a busy host each of
    them waits for a CPU; the same archive restored from a file took 0.89 x the time
    (runbooks/performance.md#restore-step). ``-j`` > 1 needs the file (NoSpace
    without the room); ``-j 1`` streams when only the archive does not fit."""
    if jobs > 1:
        check_free_space(pg, facts, source, archive_inside=True)
        return False
    try:
        check_free_space(pg, facts, source, archive_inside=True)
    except NoSpace:
        check_free_space(pg, facts, source, archive_inside=False)
        return True
    return False


def restore_options(facts: ServerFacts, jobs: int) -> list[str]:
    """pg_restore options of this server's major (infra/versions): fewer commits on 17+."""
    return versions.restore_transaction_size(major_version(facts.version), jobs)


class NoSpace(RunbookError):
    """check_free_space refused: the restore would not fit beside what is on the disk."""


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
    except MissingCommand:  # no df in the image: the check is skipped, as without privileges
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
            raise NoSpace(
                f"コンテナのディスクの空きが足りません（必要 約 {human_size(need)}、"
                f"空き {human_size(free[filesystem])}）。満杯になると稼働中の DB も止まるため中止しました",
                "不要な DB（invoke restore-list）や古いファイルを消して空きを作る"
                + ("。--jobs=1 なら、アーカイブを置く空きがないときは置かずに復元します"
                   if archive_inside else ""),
            )


@dataclass(frozen=True)
class RestoreJob:
    """What to restore where: the file, the existing empty database it goes into, and
    how (``options``: ownership, privileges, jobs). ``replace``: the staging database of
    a replace (ownership resolves as a replace's); ``on_upload``: told the archive's path
    in the container once it is sent (so that an interrupted run's upload is found)."""

    source: Source
    database: str
    options: RestoreOptions
    replace: bool = False
    on_upload: Callable[[str], None] | None = None


def restore_into(pg: Postgres, settings: Settings, job: RestoreJob, console: Console,
                 facts: ServerFacts) -> str:
    """Restore the job's file into its database; raise on any error.

    Returns the sha256 of the bytes restored (hashed on the way); the caller
    compares it with the record before the result is used."""
    source, database, options, replace, on_upload = (
        job.source, job.database, job.options, job.replace, job.on_upload)
    digest = HashingReader(source.path)
    started = time.monotonic()
    no_owner = not options.restores_owners(source, replace)
    if source.format == "plain":
        check_free_space(pg, facts, source, archive_inside=False)
        skipped = (["所有者"] if no_owner and options.archive_has_owners(source) else []) + (
            ["権限"] if options.no_acl else [])
        console.step(f"psql（ON_ERROR_STOP、単一トランザクション）で {database} に復元"
                     + (f"（{'・'.join(skipped)}の文は流さない）" if skipped else ""))
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                "-U", settings.db_user, "-d", database]
        chunks = digest.chunks()
        if skipped:
            chunks = without_owner_and_acl(chunks, owners=no_owner, acl=options.no_acl)
        faults.kill_point("staging-restore", delay=0.1)
        result = pg.run(argv, stdin=chunks, on_stdout=lambda _data: None)
    else:
        argv = ["pg_restore", "--exit-on-error", "-U", settings.db_user, "-d", database]
        if no_owner:
            argv.append("--no-owner")
        if options.no_acl:
            argv.append("--no-acl")
        jobs = options.jobs or settings_jobs(settings, pg)
        argv += restore_options(facts, jobs)
        if archive_streams(pg, facts, source, jobs):
            console.step(f"pg_restore で {database} に復元（コンテナの /tmp に空きがないため標準入力から）")
            faults.kill_point("staging-restore", delay=0.1)
            result = pg.run(argv, stdin=digest.chunks())
        else:
            console.step(f"アーカイブをコンテナへ送る（{human_size(source.size)}、sha256 を同時に計算）")
            with file_in_container(pg, source, digest, on_upload) as inside:
                console.step(f"pg_restore{f' -j {jobs}' if jobs > 1 else ''} で {database} に復元")
                faults.kill_point("staging-restore", delay=0.1)
                result = pg.run(argv + (["-j", str(jobs)] if jobs > 1 else []) + [inside])
    if not result.ok:
        check_digest(source, digest.hexdigest())  # a damaged file: say so, not just "failed"
        text = result.error_text()
        hint = "ファイルが壊れていないか invoke verify で確認"
        if re.search(r'role "[^"]+" does not exist', result.stderr):
            hint = ("戻し先にないロールです。invoke backup-globals のロールを流すか、--ownership=restorer "
                    "--no-acl を付けて再実行（所有者はすべて DB_USER になり、権限は本番 DB から写します）")
        elif re.search(r"must be owner|must be able to SET ROLE|must be member|permission denied",
                       result.stderr):
            hint = ("DB_USER の権限が足りません。invoke check の「権限（置き換え）」で足りないものを確かめる"
                    "（所有者のロールのメンバーか。別のロールの所有物があればそのロールも）")
        raise RunbookError(f"復元に失敗しました（{database}）: {text}", hint)
    console.step(f"復元完了（{time.monotonic() - started:.1f} 秒）")
    sha256 = digest.hexdigest()
    check_digest(source, sha256)
    return sha256


def flush_restored_data(pg: Postgres, console: Console) -> None:
    """A CHECKPOINT while the app still runs, right before its containers stop: the
    restore's data (hundreds of MB of dirty pages in the server and the kernel) is
    written out now, not during the stop, the swap's commit and the start, which
    are the write downtime and were slowed down by that writeback (measured in
    runbooks/performance.md). Best effort: without the right to (superuser or
    pg_checkpoint) or on any error it is skipped; nothing here is a safety step."""
    console.step("復元したデータをディスクに書き出し（CHECKPOINT。アプリはまだ動いています）")
    with contextlib.suppress(RunbookError):
        pg.run(pg.psql_argv("postgres") + ["-c", "CHECKPOINT"],
               environment={"PGOPTIONS": "-c statement_timeout=120s"})


def settings_jobs(settings: Settings, pg: Postgres) -> int:
    if settings.restore_jobs:
        return settings.restore_jobs
    return default_jobs(pg.container.cpu_count())
