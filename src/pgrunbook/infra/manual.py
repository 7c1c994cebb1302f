"""The hand procedure each task replaces, as shell lines (for --dry-run and the docs).

These are the runbook's own commands with this env's settings filled in, so an
operator can always fall back to doing a step by hand. The password is never
written out: ``-e PGPASSWORD`` passes the operator's shell variable through.
"""

from __future__ import annotations

import shlex
from datetime import date, timedelta
from pathlib import Path

from pgrunbook.core.settings import Settings
from pgrunbook.infra import versions
from pgrunbook.infra.postgres import quote_literal


def _relative(settings: Settings, path: Path) -> str:
    try:
        return str(path.relative_to(settings.config_dir))
    except ValueError:
        return str(path)


def container_reference(settings: Settings) -> str:
    """The container as a shell word: its name, or (DB_SERVICE not yet resolved) the
    docker ps that finds it by Compose's labels."""
    if settings.db_container:
        return shlex.quote(settings.db_container)
    labels = f" --filter label=com.docker.compose.service={shlex.quote(settings.db_service)}"
    if settings.compose_project:
        labels += f" --filter label=com.docker.compose.project={shlex.quote(settings.compose_project)}"
    return f'"$(docker ps -q{labels})"'


def _exec(settings: Settings, interactive_stdin: bool = True) -> str:
    password = " -e PGPASSWORD" if settings.db_password else ""
    flag = " -i" if interactive_stdin else ""
    return f"docker exec{flag}{password} {container_reference(settings)}"


def connect_command(settings: Settings, database: str) -> str:
    """psql at a terminal inside the container: how to look at a database whose
    container publishes no port (the sandbox, a scratch restore)."""
    password = " -e PGPASSWORD" if settings.db_password else ""
    return (f"docker exec -it{password} {container_reference(settings)} "
            f"psql -U {shlex.quote(settings.db_user)} -d {shlex.quote(database)}")


def dump_argv(settings: Settings, fmt: str, no_owner: bool = False, no_acl: bool = False,
              compression: str | None = None) -> list[str]:
    """pg_dump's argv. ``compression``: the -Z the kit chose for this server's pg_dump;
    without it (no server asked: --dry-run, the docs) DUMP_COMPRESSION or the
    default of pg_dump 15 and older."""
    argv = ["pg_dump", "-U", settings.db_user, "-d", settings.db_name,
            "-F", "c" if fmt == "custom" else "p"]
    if fmt == "custom":
        argv += ["-Z", compression or settings.dump_compression or versions.DEFAULT_BEFORE_16]
    argv.append(f"--lock-wait-timeout={settings.dump_lock_wait_timeout}")
    if no_owner:
        argv.append("--no-owner")
    if no_acl:
        argv.append("--no-acl")
    return argv


def backup_commands(
    settings: Settings, fmt: str, target: Path, no_owner: bool = False, no_acl: bool = False
) -> list[str]:
    directory = shlex.quote(_relative(settings, target.parent))
    final = shlex.quote(_relative(settings, target))
    partial = shlex.quote(_relative(settings, target) + ".partial")
    dump = shlex.join(dump_argv(settings, fmt, no_owner, no_acl))
    lines = [f"mkdir -p {directory} && chmod 700 {directory}"]
    if fmt == "custom" and not settings.dump_compression:
        lines.append(f"# PostgreSQL 16 以降の pg_dump では -Z {versions.DEFAULT_FROM_16}"
                     "（キットの既定。DUMP_COMPRESSION が空のとき）")
    if fmt == "custom":
        lines.append(f"# PostgreSQL {versions.STATISTICS_SINCE} 以降の pg_dump には "
                     f"{' '.join(versions.dump_statistics(versions.STATISTICS_SINCE))}"
                     "（プランナーの統計もアーカイブへ。キットの既定）")
    lines.append(f"{_exec(settings)} {dump} > {partial}")
    if fmt == "custom":
        lines.append(f"{_exec(settings)} pg_restore --list < {partial} > /dev/null")
    else:
        lines.append(f"tail -n 5 {partial}   # '-- PostgreSQL database dump complete' を確認")
    lines += [
        f"ls -lh {partial}",
        f"mv -n {partial} {final}",
        f"(cd {directory} && sha256sum {shlex.quote(target.name)} > "
        f"{shlex.quote(target.name + '.sha256')})",
    ]
    return lines


def verify_commands(settings: Settings, target: Path) -> list[str]:
    directory = shlex.quote(_relative(settings, target.parent))
    name = shlex.quote(target.name)
    path = shlex.quote(_relative(settings, target))
    lines = [
        f"ls -lh {path}",
        f"(cd {directory} && sha256sum -c {name}.sha256)",
    ]
    if target.suffix == ".dump":
        lines += [
            f"{_exec(settings)} pg_restore --list < {path} | grep -c 'TABLE DATA'",
            f"{_exec(settings)} pg_restore -f /dev/null < {path}",
        ]
    else:
        lines.append(f"tail -n 5 {path}   # '-- PostgreSQL database dump complete' を確認")
    return lines


# --- Hand procedures for the restore steps (the runbook's リストア A/B and SQL) ---
# Used by the runbook site; the restore tasks do the same with more checks.


def _sql_name(name: str) -> str:
    """An identifier as psql needs it: bare when plain lowercase, else double-quoted."""
    if name and name[0] in "abcdefghijklmnopqrstuvwxyz_" and all(
        ch in "abcdefghijklmnopqrstuvwxyz0123456789_" for ch in name
    ):
        return name
    return '"' + name.replace('"', '""') + '"'


def _shell_sql(statement: str) -> str:
    """SQL as one shell word, readable: "...'app'..." rather than '...'"'"'app'"'"'...'."""
    if "'" in statement and not any(ch in statement for ch in '"$`\\!'):
        return f'"{statement}"'
    return shlex.quote(statement)


def _psql(settings: Settings, database: str, *statements: str) -> str:
    """One psql session (stops at the first error) running each statement with -c."""
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-U", settings.db_user, "-d", database]
    commands = "".join(f" -c {_shell_sql(statement)}" for statement in statements)
    return f"{_exec(settings)} {shlex.join(argv)}{commands}"


def _load(settings: Settings, archive: Path, database: str, no_owner: bool, no_acl: bool) -> str:
    """Stream a host archive into a database: pg_restore for .dump, psql for .sql."""
    path = shlex.quote(_relative(settings, archive))
    if archive.suffix == ".sql":
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                "-U", settings.db_user, "-d", database]
    else:
        argv = ["pg_restore", "--exit-on-error", "-U", settings.db_user, "-d", database]
        if no_owner:
            argv.append("--no-owner")
        if no_acl:
            argv.append("--no-acl")
    return f"{_exec(settings)} {shlex.join(argv)} < {path}"


def terminate_sql(database: str) -> str:
    return (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = {quote_literal(database)} AND pid <> pg_backend_pid();"
    )


def preflight_commands(settings: Settings) -> list[str]:
    """The runbook's 事前確認: which container, which server and pg_dump versions."""
    return [
        'docker ps --format "table {{.Names}}\\t{{.Image}}\\t{{.Status}}"',
        f"{_exec(settings)} psql -X -U {shlex.quote(settings.db_user)} "
        f"-d {shlex.quote(settings.db_name)} -Atc 'SELECT current_database(), version();'",
        f"{_exec(settings)} pg_dump --version",
    ]


def table_summary_commands(settings: Settings, database: str) -> list[str]:
    """The post-restore look: tables with row estimates, then the Prisma migrations if any."""
    tables = (
        "SELECT schemaname, relname, n_live_tup FROM pg_stat_user_tables "
        "ORDER BY schemaname, relname;"
    )
    migrations = (
        "SELECT migration_name, finished_at, rolled_back_at FROM _prisma_migrations "
        "ORDER BY started_at DESC LIMIT 5;"
    )
    return [
        f"{_exec(settings)} psql -X -U {shlex.quote(settings.db_user)} -d {shlex.quote(database)} "
        f"-c 'ANALYZE;' -c {shlex.quote(tables)}",
        f"{_exec(settings)} psql -X -U {shlex.quote(settings.db_user)} -d {shlex.quote(database)} "
        f"-c {shlex.quote(migrations)}   # Prisma を使う DB のみ",
    ]


def restore_scratch_commands(
    settings: Settings, archive: Path, database: str, no_owner: bool = False, no_acl: bool = False
) -> list[str]:
    """The runbook's B: restore into a separate database; the live one is never touched."""
    return [
        _psql(settings, "postgres", f"CREATE DATABASE {_sql_name(database)};"),
        _load(settings, archive, database, no_owner, no_acl),
        *table_summary_commands(settings, database),
    ]


def restore_replace_commands(
    settings: Settings,
    archive: Path,
    staging: str,
    previous: str,
    no_owner: bool = False,
    no_acl: bool = False,
) -> list[str]:
    """The runbook's A made safe: staging first, then swap names; the old DB is kept."""
    live = settings.db_name
    lines = [
        "# 1. 本番 DB には触らず、staging DB に復元して確かめる。staging は本番 DB と同じ DB として作る:",
        "#    下の \\l+ の所有者・照合順序・ロケールプロバイダー（ICU なら ICU_LOCALE）・表領域を CREATE",
        "#    DATABASE に OWNER / LC_COLLATE / LC_CTYPE / LOCALE_PROVIDER / ICU_LOCALE / TABLESPACE で付ける",
        _psql(settings, "postgres", f"\\l+ {live}"),
        _psql(settings, "postgres", f"CREATE DATABASE {_sql_name(staging)};"),
        _load(settings, archive, staging, no_owner, no_acl),
        *table_summary_commands(settings, staging)[:1],
        "# 2. アプリの書き込みを止める",
    ]
    if settings.app_containers:
        lines.append("docker stop " + " ".join(shlex.quote(name) for name in settings.app_containers))
    else:
        lines.append("#    メンテナンスモードなど（APP_CONTAINERS を設定すると docker stop の行になる）")
    lines += [
        "# 3. 接続を切って名前を入れ替える（旧 DB は消さずに残す）",
        _psql(
            settings, "postgres",
            terminate_sql(live),
            f"ALTER DATABASE {_sql_name(live)} RENAME TO {_sql_name(previous)};",
            f"ALTER DATABASE {_sql_name(staging)} RENAME TO {_sql_name(live)};",
        ),
        "#    接続数の上限・テンプレートかどうか・DB 単位の設定と権限は以前の DB から写す",
        "#    （ALTER DATABASE … CONNECTION LIMIT / IS_TEMPLATE / SET、GRANT … ON DATABASE）",
        "# 4. アプリを再開して動作確認",
    ]
    if settings.app_containers:
        lines.append("docker start " + " ".join(shlex.quote(name) for name in settings.app_containers))
    lines += table_summary_commands(settings, live)
    return lines


def rollback_commands(settings: Settings, previous: str, failed: str) -> list[str]:
    """Undo a replace: the restored DB steps aside, the kept previous DB comes back."""
    live = settings.db_name
    return [
        _psql(
            settings, "postgres",
            terminate_sql(live),
            f"ALTER DATABASE {_sql_name(live)} RENAME TO {_sql_name(failed)};",
            f"ALTER DATABASE {_sql_name(previous)} RENAME TO {_sql_name(live)};",
        ),
    ]


def recover_commands(settings: Settings) -> list[str]:
    """restore-recover by hand: look, then reopen, drop the staging DB, remove uploads, start apps."""
    live = settings.db_name
    container = settings.db_container
    apps = " ".join(settings.app_containers) or "<アプリのコンテナ>"
    return [
        "# 2. 直す: 本番 DB を開く・staging DB を消す・アップロードを消す・アプリを起動",
        _psql(settings, "postgres",
              f"SELECT datname, datallowconn, shobj_description(oid, 'pg_database') FROM pg_database "
              f"WHERE datname = {quote_literal(live)} OR shobj_description(oid, 'pg_database') LIKE "
              f"'pgrunbook:staging:{settings.env}:%';"),
        f"docker exec {container} sh -c 'ls -d /tmp/pgrunbook-* 2>/dev/null'",
        "docker ps -a --filter status=exited",
        "# 2. 直す: 閉じた本番 DB を開く、残った staging DB を消す、アップロードを消す、止めたアプリを起動",
        _psql(settings, "postgres", f"ALTER DATABASE {_sql_name(live)} WITH ALLOW_CONNECTIONS true;"),
        _psql(settings, "postgres", "DROP DATABASE \"<残った staging DB>\" WITH (FORCE);"),
        f"docker exec {container} sh -c 'rm -rf /tmp/pgrunbook-upload-{settings.env}-*'",
        f"docker start {apps}",
    ]


def drop_database_commands(settings: Settings, database: str) -> list[str]:
    """Remove a scratch or kept-previous database (never the live one)."""
    if database == settings.db_name:
        raise ValueError("the live database is never dropped by a documented procedure")
    return [
        _psql(settings, "postgres", terminate_sql(database), f"DROP DATABASE {_sql_name(database)};"),
    ]


def restore_test_commands(settings: Settings, archive: Path, database: str) -> list[str]:
    """verify --restore-test by hand: restore into a temporary DB, look, drop it."""
    return [
        *restore_scratch_commands(settings, archive, database)[:2],
        *table_summary_commands(settings, database)[:1],
        *drop_database_commands(settings, database),
    ]


def prestage_commands(settings: Settings, archive: Path, prestaged: str, staging: str,
                      previous: str) -> list[str]:
    """RESTORE_PRESTAGE by hand: keep a tested restore closed, later swap it in."""
    replace = restore_replace_commands(settings, archive, staging, previous)
    swap_from = next(i for i, line in enumerate(replace) if line.startswith("# 2."))
    return [
        "# 準備（夜間の復元テストで）: 最新のバックアップを別 DB に復元して行数を確かめ、接続を閉じて残す",
        *restore_scratch_commands(settings, archive, prestaged)[:2],
        *table_summary_commands(settings, prestaged)[:1],
        _psql(settings, "postgres",
              f"COMMENT ON DATABASE {_sql_name(prestaged)} IS "
              f"{quote_literal('prestaged: ' + archive.name)};",
              f"ALTER DATABASE {_sql_name(prestaged)} WITH ALLOW_CONNECTIONS false;"),
        "# 置き換えるとき: 開いて行数をもう一度確かめてから、staging DB として名前を入れ替える",
        _psql(settings, "postgres", f"ALTER DATABASE {_sql_name(prestaged)} RENAME TO {_sql_name(staging)};",
              f"ALTER DATABASE {_sql_name(staging)} WITH ALLOW_CONNECTIONS true;"),
        *table_summary_commands(settings, staging)[:1],
        *replace[swap_from:],
    ]


def globals_argv(settings: Settings, with_role_passwords: bool = False) -> list[str]:
    argv = ["pg_dumpall", "-U", settings.db_user, "--globals-only"]
    if not with_role_passwords:
        argv.append("--no-role-passwords")
    return argv


def globals_commands(settings: Settings, target: Path, with_role_passwords: bool = False) -> list[str]:
    directory = shlex.quote(_relative(settings, target.parent))
    final = shlex.quote(_relative(settings, target))
    partial = shlex.quote(_relative(settings, target) + ".partial")
    dump = shlex.join(globals_argv(settings, with_role_passwords))
    return [
        f"mkdir -p {directory} && chmod 700 {directory}",
        f"(umask 077 && {_exec(settings)} {dump} > {partial})",
        f"tail -n 5 {partial}   # '-- PostgreSQL database cluster dump complete' を確認",
        f"mv -n {partial} {final}",
        f"(cd {directory} && sha256sum {shlex.quote(target.name)} > "
        f"{shlex.quote(target.name + '.sha256')})",
    ]


# The check's questions to the server as one readable psql query (the task's own
# query, check.DATABASE_QUERY, also counts unreadable tables and returns JSON).
CHECK_QUERY = (
    "SELECT current_database(), pg_size_pretty(pg_database_size(current_database())), "
    "current_setting('server_version'), pg_get_userbyid(d.datdba) AS owner, current_user, "
    "r.rolsuper, r.rolcreatedb, pg_has_role('pg_signal_backend', 'MEMBER') AS signal_backend "
    "FROM pg_database d, pg_roles r WHERE d.datname = current_database() AND r.rolname = current_user;"
)


def check_commands(settings: Settings) -> list[str]:
    """The runbook's 事前確認 by hand: what ``invoke check`` looks at, one command each."""
    folder = shlex.quote(_relative(settings, settings.backup_dir))
    container = container_reference(settings)
    compose = ("{{.Label \"com.docker.compose.project\"}}/{{.Label \"com.docker.compose.service\"}}")
    return [
        "echo \"DOCKER_HOST=${DOCKER_HOST:-ローカル}\" && "
        "docker info --format '{{.Name}} {{.ServerVersion}}'",
        "docker ps --format 'table {{.Names}}\\t{{.ID}}\\t{{.Image}}\\t{{.Status}}\\t"
        f"{compose}'",
        "docker ps --filter label=com.docker.compose.service=db   # Compose: サービス db のコンテナ",
        f"docker inspect --format '{{{{.Id}}}} {{{{.Config.Image}}}} {{{{json .State}}}}' {container}"
        "   # ID・イメージ・StartedAt・Health",
        f"docker inspect --format '{{{{range .Mounts}}}}{{{{.Source}}}} -> {{{{.Destination}}}}"
        f"{{{{println}}}}{{{{end}}}}' {container}   # DB のボリューム",
        f"{_exec(settings, interactive_stdin=False)} psql -X -U {shlex.quote(settings.db_user)} "
        f"-d {shlex.quote(settings.db_name)} -x -c \"{CHECK_QUERY}\"",
        f"ls -ld {folder} && df -h {folder}   # 0700・自分の所有・空き容量",
        f"ls -lt {folder} | head -5   # 最新のバックアップ",
        "stat -c '%a %n' .env*   # .env と .env.<環境> は 600 であること",
        f"crontab -l | grep -A8 '# BEGIN pgrunbook {settings.env}'",
    ]


# ---- the same by hand (runbooks/audit.md) ----------------------------------------------


def evidence_commands(settings: Settings, first: date, last: date, name: str) -> list[str]:
    """What ``evidence`` reads, by hand: jq over the work log, the manifests, the bucket."""
    log = shlex.quote(_relative(settings, settings.worklog_path))
    folder = shlex.quote(_relative(settings, settings.backup_dir))
    within = (f'.env == "{settings.env}" and .time >= "{first.isoformat()}" '
              f'and .time < "{(last + timedelta(days=1)).isoformat()}"')
    endpoint = f" --endpoint-url {shlex.quote(settings.offsite_endpoint_url)}" \
        if settings.offsite_endpoint_url else ""
    return [
        "# 作業ログの鎖（書き換え・削除・差し込みがないこと）",
        f"invoke worklog-verify --env={settings.env}",
        "# 日ごとのバックアップと検証（ファイル名と sha256 が同じ verify ok があれば検証済み）",
        f"jq -c 'select({within} and (.task == \"backup\" or .task == \"verify\")) "
        f"| [.time, .task, .file, .sha256, .result]' {log}",
        "# 復元訓練（復旧時間 duration_seconds、照合したテーブル・行）",
        f"jq -c 'select({within} and .task == \"restore-drill\") "
        f"| [.time, .file, .duration_seconds, .tables_compared, .rows_compared, .result]' {log}",
        "# 置き換え・部分リストア・ロールバック（実行者・承認者）",
        f"jq -c 'select({within} and (.task | "
        f"test(\"^restore-(replace|rollback|partial|partial-undo|recover)$\"))) "
        f"| [.time, .task, .operator, .approved_by, .file, .previous, .result]' {log}",
        "# 固定したバックアップ（ラベル・保管期限・sha256）",
        f"jq -c 'select(.keep_until) | [.file, .label, .keep_until, .sha256]' {folder}/*.json",
        "# オフサイトのコピーのロック期限（バケットの値）",
        f"aws s3api head-object{endpoint} --bucket {settings.offsite_bucket or '<OFFSITE_BUCKET>'} "
        f"--key {shlex.quote(settings.offsite_prefix + name + '.age')} "
        "--query '[ObjectLockMode, ObjectLockRetainUntilDate, Metadata]'",
        "# 鍵の訓練・PITR の訓練の最後",
        f"jq -c 'select(.env == \"{settings.env}\" and (.task == \"key-drill\" or .task == \"pitr-drill\")) "
        f"| [.time, .task, .file, .result]' {log} | tail -n 4",
    ]


def evidence_verify_commands(settings: Settings, file: str) -> list[str]:
    """evidence-verify by hand: the file's sha256 in an evidence line, the chain intact."""
    log = shlex.quote(_relative(settings, settings.worklog_path))
    quoted = shlex.quote(file)
    return [
        f"sha256sum {quoted}",
        f"grep -n \"\\\"sha256\\\": \\\"$(sha256sum {quoted} | cut -d' ' -f1)\\\"\" {log}"
        "   # evidence の行があること（行番号を控える）",
        f"grep -o 'pgrunbook-chain-[a-z]*\" content=\"[^\"]*' {quoted}"
        "   # 証跡に書いた作業ログの行数と先頭のハッシュ",
        f"sed -n \"${{LINES}}p\" {log} | grep -o '\"hash\": \"[0-9a-f]*\"'"
        "   # LINES=上の行数。同じハッシュであること",
        f"invoke worklog-verify --env={settings.env}   # 鎖が今も途切れていないこと",
    ]


# --- C. 一部だけ戻す (restore-partial) by hand: a work database, the rows copied into the
# live database under a schema of their own, then one transaction ---

PARTIAL_SCHEMA = "pgrunbook_backup"


def partial_commands(settings: Settings, archive: Path, work: str, table: str, key: str) -> list[str]:
    """restore-partial --mode=missing by hand, for ``table`` (``schema.name``) identified by
    ``key``: restore its rows into a work database, copy them into the live database
    beside the live table, look at the difference, put back the missing rows in one
    transaction (with the keys kept for the undo)."""
    live = settings.db_name
    schema, name = table.split(".", 1)
    target = f"{_sql_name(schema)}.{_sql_name(name)}"
    copy = f"{PARTIAL_SCHEMA}.{_sql_name(name)}"
    path = shlex.quote(_relative(settings, archive))
    restore = ["pg_restore", "--exit-on-error", "--no-owner", "--no-acl", "-U", settings.db_user, "-d", work]
    missing = (f"SELECT b.* FROM {copy} b WHERE NOT EXISTS "
               f"(SELECT 1 FROM {target} t WHERE t.{_sql_name(key)} = b.{_sql_name(key)})")
    sequence = f"pg_get_serial_sequence('{target}', '{key}')"
    return [
        "# 1. 作業用 DB に、バックアップの定義と、そのテーブルの行だけを復元（本番 DB には触れない）",
        _psql(settings, "postgres", f"CREATE DATABASE {_sql_name(work)};"),
        f"{_exec(settings)} {shlex.join(restore + ['--section=pre-data'])} < {path}",
        f"{_exec(settings)} {shlex.join(restore + ['--data-only', '-n', schema, '-t', name])} < {path}",
        "# 2. その行を別のスキーマに移し、本番 DB に写す（本番のテーブルはまだそのまま）",
        _psql(settings, work, f"CREATE SCHEMA {PARTIAL_SCHEMA};",
              f"ALTER TABLE {target} SET SCHEMA {PARTIAL_SCHEMA};"),
        f"{_exec(settings, interactive_stdin=False)} pg_dump -U {shlex.quote(settings.db_user)} "
        f"-d {shlex.quote(work)} -n {PARTIAL_SCHEMA} --no-owner --no-acl | "
        f"{_exec(settings)} psql -X -q -v ON_ERROR_STOP=1 -U {shlex.quote(settings.db_user)} "
        f"-d {shlex.quote(live)}",
        "# 3. 差を見る: バックアップにだけある行（その後に削除）と、内容が違う行（その後に更新）",
        _psql(settings, live,
              f"SELECT 'バックアップにだけ' AS 差, b.{_sql_name(key)} FROM {copy} b WHERE NOT EXISTS "
              f"(SELECT 1 FROM {target} t WHERE t.{_sql_name(key)} = b.{_sql_name(key)}) UNION ALL "
              f"SELECT '内容が違う', b.{_sql_name(key)} FROM {copy} b "
              f"JOIN {target} t USING ({_sql_name(key)}) "
              "WHERE b::text <> t::text ORDER BY 2;"),
        "# 4. 消えた行を戻す: 1 トランザクション、ロックは 5 秒まで待つ、戻したキーは取り消し用に残す、",
        "#    トリガーは止める（所有者の権限が必要）、シーケンスは戻した値より後ろに進めるだけ",
        _psql(settings, live, "BEGIN;", "SET LOCAL lock_timeout = '5s';",
              f"LOCK TABLE {target} IN SHARE ROW EXCLUSIVE MODE;",
              f"CREATE TABLE {copy}_put_back AS SELECT {_sql_name(key)} FROM ({missing}) x;",
              f"ALTER TABLE {target} DISABLE TRIGGER USER;",
              f"INSERT INTO {target} {missing};",
              f"ALTER TABLE {target} ENABLE TRIGGER USER;",
              f"SELECT setval(x.s, x.m) FROM (SELECT {sequence} AS s, (SELECT max({_sql_name(key)}) "
              f"FROM {target}) AS m) x WHERE x.s IS NOT NULL "
              "AND x.m > coalesce(pg_sequence_last_value(x.s::regclass), 0);",
              "COMMIT;"),
    ]


def partial_undo_commands(settings: Settings, work: str, table: str, key: str) -> list[str]:
    """Undo the hand put-back (the rows it added, by the keys it kept), then clean up."""
    live = settings.db_name
    schema, name = table.split(".", 1)
    target = f"{_sql_name(schema)}.{_sql_name(name)}"
    kept = f"{PARTIAL_SCHEMA}.{_sql_name(name)}_put_back"
    return [
        "# 取り消す（戻した行がその後に変わっていないことを確かめてから）",
        _psql(settings, live, "BEGIN;", "SET LOCAL lock_timeout = '5s';",
              f"DELETE FROM {target} WHERE {_sql_name(key)} IN (SELECT {_sql_name(key)} FROM {kept});",
              "COMMIT;"),
        "# 片付け: 写した行と作業用 DB を消す（取り消しの必要がなくなってから）",
        _psql(settings, live, f"DROP SCHEMA {PARTIAL_SCHEMA} CASCADE;"),
        *drop_database_commands(settings, work),
    ]
