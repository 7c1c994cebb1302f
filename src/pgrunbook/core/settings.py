"""Per-environment settings: ``.env`` (shared defaults) + ``.env.<env>`` -> one frozen object.

Rules (documented in the README and in .env.example):

* Only the files count. Process environment variables never override a key:
  a stray ``DB_NAME`` in an operator's shell must not redirect a prod task.
  The two exceptions are explicit and namespaced: ``PGRUNBOOK_HOME`` (the
  folder that holds the files) and ``PGRUNBOOK_<ENV>_DB_PASSWORD`` (the
  password of that one env, used only when its files hold no DB_PASSWORD).
* Unknown keys are errors (a misspelt key silently falling back to a default
  is how a prod backup ends up in the dev folder).
* Two envs may not share a backup folder or a (container, database) pair
  (here as written; ``discovery.bind`` compares the resolved container IDs).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import unquote

from dotenv import dotenv_values

from pgrunbook.core.durations import parse_duration
from pgrunbook.core.errors import RunbookError

ENV_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CONTAINER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
PREFIX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,63}$")
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}

# key -> (built-in default, Japanese one-line description). ``None``: no default.
# .env.example documents every key; a test keeps the two in step.
KEYS: dict[str, tuple[str | None, str]] = {
    "DB_CONTAINER": ("knot-db", "PostgreSQL が動いている Docker コンテナ名"),
    "DB_USER": ("app", "pg_dump / pg_restore / psql で使う DB ユーザー"),
    "DB_NAME": ("app", "対象データベース名"),
    "DB_PASSWORD": (None, "DB ユーザーのパスワード（任意）"),
    "BACKUP_DIR": (None, "バックアップの保存先（既定: backups/<env>）"),
    "BACKUP_PREFIX": ("knot", "バックアップファイル名の先頭"),
    "DUMP_COMPRESSION": ("", "pg_dump -Z の圧縮指定（空: 版ごとの既定。0-9、16 以降は lz4 や zstd:3 も）"),
    "DUMP_LOCK_WAIT_TIMEOUT": ("15min", "ロックをこれ以上待たずに pg_dump を失敗させる（例: 15min）"),
    "MIN_BACKUP_BYTES": ("256", "これより小さいバックアップは不正とみなす（バイト）"),
    "ROW_COUNTS": ("true", "バックアップ時に各テーブルの行数を数えてマニフェストに残す"),
    "PROTECTED": (None, "保護環境か（既定: prod のみ true）。他環境からのリストアに承認が必要"),
    "APP_CONTAINERS": ("", "置き換えリストア中に止めるアプリのコンテナ名（カンマ区切り）"),
    "MASKING_SQL": ("", "本番データをこの環境に戻した後に流すマスキング SQL ファイル"),
    "POST_RESTORE_COMMAND": ("", "リストア後にホストで実行する確認コマンド"),
    "APP_DATABASE_URL": ("", "アプリの DATABASE_URL（リストア先を確認するときの接続先の元）"),
    "RESTORE_JOBS": ("auto", "pg_restore の並列数（auto: コンテナの CPU の半分、最大 4）"),
    "RETENTION_DAYS": ("30", "この日数より新しいバックアップはすべて残す"),
    "RETENTION_WEEKLY_DAYS": ("90", "この日数までは週に 1 つ残す"),
    "RETENTION_MONTHLY_DAYS": ("365", "この日数までは月に 1 つ残す"),
    "RETENTION_MIN_KEEP": ("3", "検証済みバックアップを最低いくつ残すか"),
    "NOTIFY_COMMAND": ("", "失敗時に実行する通知コマンド"),
    "NOTIFY_WEBHOOK_URL": ("", "失敗時に JSON を POST する Webhook URL"),
    "NOTIFY_ON_SUCCESS": ("false", "成功時も通知するか"),
    "SANDBOX_IMAGE": ("postgres:15", "sandbox-up で使う PostgreSQL イメージ"),
    "OFFSITE_BUCKET": ("", "オフサイトコピーを置く S3 互換ストレージのバケット名"),
    "OFFSITE_PREFIX": ("{env}/", "バケット内の置き場所（既定: <env>/）"),
    "OFFSITE_REGION": ("", "バケットのリージョン（例: ap-northeast-1）"),
    "OFFSITE_ENDPOINT_URL": ("", "S3 互換エンドポイント（空: AWS S3。MinIO・GCS などは URL）"),
    "OFFSITE_AGE_RECIPIENTS": ("", "暗号化の宛先 age 公開鍵（age1…、カンマ区切り）"),
    "OFFSITE_RETENTION_DAYS": ("90", "オフサイトコピーを残す日数（最新の 1 つは常に残す）"),
    # monitoring (issue 13): dead-man's-switch pings, Prometheus textfile, chat formats
    "PING_URL": ("", "定期バックアップの死活監視 ping 先（healthchecks.io / Uptime Kuma の URL）"),
    "METRICS_FILE": ("", "Prometheus（node_exporter textfile collector）用メトリクスファイル（.prom）"),
    "NOTIFY_FORMAT": ("generic", "Webhook の形式: generic（JSON）/ slack / teams"),
    # --- content drift and undeletable offsite copies (issue 12)
    "DRIFT_MAX_DROP": ("50", "前回より行数がこの % を超えて減ったら疑わしいバックアップにする（100 で無効）"),
    "DRIFT_MIN_ROWS": ("100", "行数の減少を判定するのは、前回この行数以上あったテーブルだけ"),
    "OFFSITE_OBJECT_LOCK": ("", "オフサイトのオブジェクトロック: governance / compliance（空: 使わない）"),
    # --- point-in-time recovery with pgBackRest (issue 15)
    "PITR_STANZA": ("", "pgBackRest のスタンザ名（空: PITR を使わない）"),
    "PITR_REPO_PATH": ("/var/lib/pgbackrest", "DB コンテナ内のリポジトリ（ボリューム）の場所"),
    "PITR_SCRATCH_NETWORK": ("none", "PITR の検証用コンテナのネットワーク（none: なし）"),
    # --- Compose-aware discovery (issue 13) ---
    "DB_SERVICE": ("", "DB の Compose サービス名（DB_CONTAINER の代わりにラベルで探す）"),
    "COMPOSE_PROJECT": ("", "Compose のプロジェクト名（DB_SERVICE / APP_SERVICES を絞る）"),
    "APP_SERVICES": ("", "置き換えリストア中に止めるアプリの Compose サービス名（カンマ区切り）"),
    # --- prestaged replace (issue 14)
    "RESTORE_PRESTAGE": ("false", "復元テストした最新のバックアップを閉じた DB で残し、置き換えを速くする"),
    # --- the auditor's evidence and the key drill (issue 25)
    "FISCAL_YEAR_START": ("04-01", "年度の始まり（MM-DD）。evidence の既定の期間は直前の年度"),
    "KEY_DRILL_MAX_AGE": ("180d", "最後の鍵の訓練（key-drill）がこれより古ければ check・status が警告"),
    # --- trust, third pass (issue 22)
    "REPLACE_SESSION_WAIT": ("60s", "DB_USER が終了できないセッション（superuser など）が終わるのを"
                                    "置き換えの前に待つ時間（例: 60s, 5m）"),
    # --- partial restore (issue 23)
    "PARTIAL_LOCK_TIMEOUT": ("5s", "一部だけ戻すときにテーブルのロックを待つ上限（超えたら何もせず中止）"),
}
SECRET_KEYS = {"DB_PASSWORD", "APP_DATABASE_URL"}
MIN_PASSWORD_LENGTH = 8  # shorter: a settings warning (a short secret masks common words)


@dataclass(frozen=True)
class Settings:
    env: str
    config_dir: Path
    files: tuple[Path, ...]
    db_container: str
    db_user: str
    db_name: str
    backup_dir: Path
    backup_prefix: str
    dump_compression: str
    dump_lock_wait_timeout: str
    min_backup_bytes: int
    row_counts: bool
    protected: bool
    app_containers: tuple[str, ...]
    masking_sql: Path | None
    post_restore_command: str
    app_database_url: str = field(repr=False)
    retention_days: int
    retention_weekly_days: int
    retention_monthly_days: int
    retention_min_keep: int
    notify_command: str
    notify_webhook_url: str
    notify_on_success: bool
    sandbox_image: str
    db_password: str | None = field(default=None, repr=False)
    offsite_bucket: str = ""
    offsite_prefix: str = ""
    offsite_region: str = ""
    offsite_endpoint_url: str = ""
    offsite_age_recipients: tuple[str, ...] = ()
    offsite_retention_days: int = 90
    restore_jobs: int | None = None  # None: auto (half of the container's CPUs, at most 4)
    ping_url: str = field(default="", repr=False)  # its path is the check's secret token
    metrics_file: Path | None = None
    notify_format: str = "generic"
    drift_max_drop: int = 50
    drift_min_rows: int = 100
    offsite_object_lock: str = ""
    pitr_stanza: str = ""
    pitr_repo_path: str = "/var/lib/pgbackrest"
    pitr_scratch_network: str = "none"
    db_service: str = ""
    compose_project: str = ""
    app_services: tuple[str, ...] = ()
    restore_prestage: bool = False
    fiscal_year_start: tuple[int, int] = (4, 1)  # (month, day)
    key_drill_max_age: timedelta = timedelta(days=180)
    replace_session_wait: float = 60.0  # seconds
    partial_lock_timeout: str = "5s"
    db_container_id: str = ""  # set by discovery.bind once the container is resolved
    # keys the shell sets to another value than the files: not used, and said so (warnings)
    shell_ignored: tuple[str, ...] = ()

    def secrets(self) -> list[str]:
        """Strings never to print: the password, and any password inside the app's URL."""
        found = [self.db_password] if self.db_password else []
        match = re.match(r"^[a-z+]+://[^:/@]*:(.+)@[^@]*$", self.app_database_url)
        if match:
            found += {match.group(1), unquote(match.group(1))}
        return found

    def warnings(self) -> list[str]:
        """Weak settings that still work: said on every task of the env (stderr)."""
        found = []
        if self.db_password is not None:
            same = [key for key, value in (("DB_USER", self.db_user), ("DB_NAME", self.db_name))
                    if value == self.db_password]
            if same:
                found.append(
                    f"DB_PASSWORD が {' と '.join(same)} と同じです（推測されやすく、画面・ログでは"
                    f"その名前も *** で隠れます）→ ALTER ROLE {self.db_user} PASSWORD で強いものに変え、"
                    f".env.{self.env} を直す"
                )
            elif len(self.db_password) < MIN_PASSWORD_LENGTH:
                found.append(
                    f"DB_PASSWORD が {MIN_PASSWORD_LENGTH} 文字未満です（推測されやすく、画面・ログで"
                    f"同じ綴りの語も *** で隠れます）→ ALTER ROLE {self.db_user} PASSWORD で長いものに変え、"
                    f".env.{self.env} を直す"
                )
        if self.shell_ignored:
            keys = ", ".join(self.shell_ignored)
            password = (f"（パスワードだけは PGRUNBOOK_{self.env.upper()}_DB_PASSWORD でも渡せます）"
                        if "DB_PASSWORD" in self.shell_ignored else "")
            files = " と ".join(path.name for path in self.files)
            found.append(
                f"シェルの環境変数 {keys} は使いません（設定は {files} だけから読みます）"
                f"→ 変えるなら .env.{self.env} に {self.shell_ignored[0]}=… と書く{password}"
            )
        return found

    @property
    def worklog_path(self) -> Path:
        return self.backup_dir / "worklog.jsonl"

    def password_environment(self) -> dict[str, str]:
        """Environment for an exec inside the container (never argv)."""
        return {"PGPASSWORD": self.db_password} if self.db_password else {}

    def describe(self) -> str:
        container = self.db_container or f"service:{self.db_service}"
        return (
            f"env={self.env} container={container} "
            f"database={self.db_name} user={self.db_user}"
        )


def config_dir_from(project_root: Path) -> Path:
    """The folder holding .env files: PGRUNBOOK_HOME, else the checkout."""
    home = os.environ.get("PGRUNBOOK_HOME")
    return Path(home).resolve() if home else project_root.resolve()


def available_envs(config_dir: Path) -> list[str]:
    names = []
    for path in sorted(config_dir.glob(".env.*")):
        name = path.name[len(".env.") :]
        if name != "example" and ENV_NAME.match(name) and path.is_file():
            names.append(name)
    return names


def example_env(known: list[str]) -> str:
    """The env an example names: one that exists, dev first (an example gets copied
    as typed: better it hits dev than prod); dev when there is none yet."""
    return "dev" if "dev" in known or not known else known[0]


def require_env(env: str | None, config_dir: Path) -> str:
    known = available_envs(config_dir)
    listing = ", ".join(known) if known else f"なし（{config_dir} に .env.<env> がありません）"
    if not env:
        raise RunbookError(
            "--env が指定されていません（本番か開発かを必ず明示します）",
            f"例: --env={example_env(known)}。利用できる環境: {listing}" if known else
            f"利用できる環境: {listing}。cp .env.example .env.dev && chmod 600 .env.dev で作り、--env=dev",
            exit_code=2,
        )
    if not ENV_NAME.match(env):
        raise RunbookError(
            f"環境名 {env!r} は使えません（英小文字・数字・_ のみ）",
            f"利用できる環境: {listing}",
            exit_code=2,
        )
    if env not in known:
        close = difflib.get_close_matches(env, known, n=1)
        guess = f"（{close[0]} のことですか？）" if close else ""
        raise RunbookError(
            f"環境 {env!r} の設定ファイル {config_dir / ('.env.' + env)} がありません{guess}",
            f"利用できる環境: {listing}。新しい環境は .env.example をコピーして作成",
            exit_code=2,
        )
    return env


def _read(path: Path) -> dict[str, str]:
    values = dotenv_values(path, interpolate=False)
    result: dict[str, str] = {}
    for key, value in values.items():
        if key.startswith("AWS_"):
            raise RunbookError(
                f"{path.name} に {key} は書けません（AWS の認証情報を設定ファイルに置かない）",
                "環境変数・~/.aws/credentials・インスタンスロールで渡す（runbooks/offsite.md）",
                exit_code=2,
            )
        if key not in KEYS:
            close = difflib.get_close_matches(key, list(KEYS), n=1)
            guess = f"（{close[0]} の誤記？）" if close else ""
            raise RunbookError(
                f"{path.name} に未知のキー {key}{guess} があります",
                "キー一覧は .env.example を参照",
                exit_code=2,
            )
        result[key] = (value or "").strip()
    return result


def _raw_values(env: str, config_dir: Path) -> tuple[dict[str, str], tuple[Path, ...]]:
    shared = config_dir / ".env"
    specific = config_dir / f".env.{env}"
    merged: dict[str, str] = {}
    files: list[Path] = []
    if shared.is_file():
        shared_values = _read(shared)
        per_env = ("BACKUP_DIR", "DB_PASSWORD", "PROTECTED", "APP_CONTAINERS", "APP_DATABASE_URL",
                   "MASKING_SQL", "POST_RESTORE_COMMAND", "PING_URL", "APP_SERVICES")
        for key in per_env:
            if key in shared_values and (key != "BACKUP_DIR" or "{env}" not in shared_values[key]):
                raise RunbookError(
                    f".env（全環境共通）に {key} は書けません（環境ごとに分けるべき値です）",
                    f".env.{env} など各環境のファイルに書く"
                    + ("（BACKUP_DIR は {env} を含めれば共通に書けます）" if key == "BACKUP_DIR" else ""),
                    exit_code=2,
                )
        merged.update(shared_values)
        files.append(shared)
    merged.update(_read(specific))
    files.append(specific)
    return merged, tuple(files)


def _boolean(key: str, text: str) -> bool:
    word = text.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise RunbookError(f"{key}={text!r} は true / false で指定してください", exit_code=2)


def _integer(key: str, text: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise RunbookError(f"{key}={text!r} は {minimum} 以上の整数で指定してください", exit_code=2)
    return value


def _seconds(key: str, text: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except RunbookError as error:
        raise RunbookError(f"{key}={text!r}: {error.message}", error.hint, 2) from None


def _checked(key: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(value):
        raise RunbookError(
            f"{key}={value!r} に使えない文字が含まれています",
            "英数字と _ - . のみで指定する",
            exit_code=2,
        )
    return value


def _webhook_url(url: str) -> str:
    if url and not re.match(r"^https?://[^\s/]+", url):
        raise RunbookError(
            "NOTIFY_WEBHOOK_URL は http:// か https:// で始まる URL で指定してください",
            exit_code=2,
        )
    return url


def _resolve_backup_dir(env: str, config_dir: Path, raw: str) -> Path:
    text = raw.replace("{env}", env) if raw else f"backups/{env}"
    path = Path(text).expanduser()
    return (path if path.is_absolute() else config_dir / path).resolve()


def load_settings(env: str | None, config_dir: Path, check_siblings: bool = True) -> Settings:
    """Load and validate the settings of one env. Raises RunbookError."""
    env = require_env(env, config_dir)
    raw, files = _raw_values(env, config_dir)

    def get(key: str) -> str:
        value = raw.get(key, "")
        if value == "":
            value = KEYS[key][0] or ""
        return value

    password = raw.get("DB_PASSWORD") or os.environ.get(f"PGRUNBOOK_{env.upper()}_DB_PASSWORD")
    masking = get("MASKING_SQL")
    masking_path = None
    if masking:
        masking_path = Path(masking).expanduser()
        if not masking_path.is_absolute():
            masking_path = (config_dir / masking_path).resolve()
    protected_text = raw.get("PROTECTED", "")
    apps = tuple(name.strip() for name in get("APP_CONTAINERS").split(",") if name.strip())
    for name in apps:
        _checked("APP_CONTAINERS", name, CONTAINER_NAME)
    compression = get("DUMP_COMPRESSION")
    if not re.match(r"^[A-Za-z0-9:=,_-]{0,32}$", compression):
        raise RunbookError(f"DUMP_COMPRESSION={compression!r} が不正です",
                           "例: 1, 6, lz4, zstd:3（空: 版ごとの既定）", 2)

    compose = _compose_values(raw, get)
    used = {key: (password or "") if key == "DB_PASSWORD" else get(key) for key in KEYS}
    shell_ignored = tuple(key for key in KEYS if key in os.environ and os.environ[key] != used[key])
    settings = Settings(
        env=env,
        config_dir=config_dir,
        files=files,
        db_container=("" if compose["db_service"]
                      else _checked("DB_CONTAINER", get("DB_CONTAINER"), CONTAINER_NAME)),
        db_user=_checked("DB_USER", get("DB_USER"), SQL_NAME),
        db_name=_checked("DB_NAME", get("DB_NAME"), SQL_NAME),
        backup_dir=_resolve_backup_dir(env, config_dir, raw.get("BACKUP_DIR", "")),
        backup_prefix=_checked("BACKUP_PREFIX", get("BACKUP_PREFIX"), PREFIX_NAME),
        dump_compression=compression,
        dump_lock_wait_timeout=_checked("DUMP_LOCK_WAIT_TIMEOUT", get("DUMP_LOCK_WAIT_TIMEOUT"),
                                        re.compile(r"^[0-9]+\s*(ms|s|min|h|d)?$")),
        min_backup_bytes=_integer("MIN_BACKUP_BYTES", get("MIN_BACKUP_BYTES"), 1),
        row_counts=_boolean("ROW_COUNTS", get("ROW_COUNTS")),
        protected=_boolean("PROTECTED", protected_text) if protected_text else env == "prod",
        app_containers=apps,
        masking_sql=masking_path,
        post_restore_command=get("POST_RESTORE_COMMAND"),
        app_database_url=get("APP_DATABASE_URL"),
        retention_days=_integer("RETENTION_DAYS", get("RETENTION_DAYS"), 1),
        retention_weekly_days=_integer("RETENTION_WEEKLY_DAYS", get("RETENTION_WEEKLY_DAYS")),
        retention_monthly_days=_integer("RETENTION_MONTHLY_DAYS", get("RETENTION_MONTHLY_DAYS")),
        retention_min_keep=_integer("RETENTION_MIN_KEEP", get("RETENTION_MIN_KEEP"), 1),
        notify_command=get("NOTIFY_COMMAND"),
        notify_webhook_url=_webhook_url(get("NOTIFY_WEBHOOK_URL")),
        notify_on_success=_boolean("NOTIFY_ON_SUCCESS", get("NOTIFY_ON_SUCCESS")),
        sandbox_image=get("SANDBOX_IMAGE"),
        db_password=password or None,
        restore_jobs=None if get("RESTORE_JOBS") == "auto" else _integer(
            "RESTORE_JOBS", get("RESTORE_JOBS"), 1),
        restore_prestage=_boolean("RESTORE_PRESTAGE", get("RESTORE_PRESTAGE")),
        replace_session_wait=_seconds("REPLACE_SESSION_WAIT", get("REPLACE_SESSION_WAIT")),
        partial_lock_timeout=_checked("PARTIAL_LOCK_TIMEOUT", get("PARTIAL_LOCK_TIMEOUT"),
                                      re.compile(r"^[0-9]+\s*(ms|s|min)?$")),
        **_offsite_values(env, get),
        **_monitoring_values(env, config_dir, get),
        **_guard_values(get),
        **_pitr_values(get),
        **_audit_values(get),
        **compose,
        shell_ignored=shell_ignored,
    )
    if check_siblings:
        _check_separation(settings)
    return settings


def sibling_settings(settings: Settings) -> Iterator[Settings]:
    """The other envs of the same folder (a broken one is skipped: it is reported when used)."""
    for other_env in available_envs(settings.config_dir):
        if other_env == settings.env:
            continue
        try:
            yield load_settings(other_env, settings.config_dir, check_siblings=False)
        except RunbookError:
            continue


def _check_separation(settings: Settings) -> None:
    """Refuse two envs that share a backup folder or a database."""
    for other in sibling_settings(settings):
        other_env = other.env
        if other.backup_dir == settings.backup_dir:
            raise RunbookError(
                f"環境 {settings.env} と {other_env} の BACKUP_DIR が同じ {settings.backup_dir} です",
                "本番と開発は必ず別のディレクトリにする（例: backups/prod と backups/dev）",
                exit_code=2,
            )
        shared_apps = set(other.app_containers) & set(settings.app_containers)
        if shared_apps:
            raise RunbookError(
                f"環境 {settings.env} と {other_env} の APP_CONTAINERS に同じコンテナ "
                f"{', '.join(sorted(shared_apps))} があります（別環境の作業で止めてしまいます）",
                f".env.{settings.env} と .env.{other_env} の APP_CONTAINERS を見直す",
                exit_code=2,
            )
        shared_services = set(other.app_services) & set(settings.app_services)
        if shared_services and other.compose_project == settings.compose_project:
            raise RunbookError(
                f"環境 {settings.env} と {other_env} の APP_SERVICES に同じサービス "
                f"{', '.join(sorted(shared_services))} があります（別環境の作業で止めてしまいます）",
                f".env.{settings.env} と .env.{other_env} の APP_SERVICES / COMPOSE_PROJECT を見直す",
                exit_code=2,
            )
        # the same text; a name and an ID of one container are found by discovery.bind
        if _container_text(other) == _container_text(settings) and other.db_name == settings.db_name:
            raise RunbookError(
                f"環境 {settings.env} と {other_env} が同じ DB "
                f"（{_container_text(settings)} の {settings.db_name}）を指しています",
                f".env.{settings.env} と .env.{other_env} の DB_CONTAINER / DB_SERVICE / DB_NAME を見直す",
                exit_code=2,
            )


def _container_text(settings: Settings) -> str:
    if settings.db_service:
        return f"サービス {settings.compose_project or '*'}/{settings.db_service}"
    return settings.db_container


def _compose_values(raw: dict[str, str], get) -> dict[str, object]:
    """DB_SERVICE, COMPOSE_PROJECT, APP_SERVICES (issue 13): the labels Compose sets."""
    service = get("DB_SERVICE")
    if service and raw.get("DB_CONTAINER"):
        raise RunbookError(
            "DB_CONTAINER と DB_SERVICE は片方だけ指定してください（どちらのコンテナか決まりません）",
            "Compose で動かしているなら DB_SERVICE（と COMPOSE_PROJECT）、そうでなければ DB_CONTAINER",
            exit_code=2,
        )
    services = tuple(s.strip() for s in get("APP_SERVICES").split(",") if s.strip())
    for name in (service, get("COMPOSE_PROJECT"), *services):
        if name:
            _checked("DB_SERVICE / COMPOSE_PROJECT / APP_SERVICES", name, CONTAINER_NAME)
    return {"db_service": service, "compose_project": get("COMPOSE_PROJECT"),
            "app_services": services}


BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
OBJECT_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")
AGE_RECIPIENT = re.compile(r"^age1[0-9a-z]{20,}$")


def _offsite_values(env: str, get) -> dict[str, object]:
    """The OFFSITE_* keys (issue 7), validated; credentials never come from these files."""
    bucket = get("OFFSITE_BUCKET")
    if bucket and not BUCKET_NAME.match(bucket):
        raise RunbookError(f"OFFSITE_BUCKET={bucket!r} はバケット名として不正です",
                           "英小文字・数字・. - の 3〜63 文字", exit_code=2)
    prefix = get("OFFSITE_PREFIX").replace("{env}", env)
    if not OBJECT_PREFIX.match(prefix) or ".." in prefix.split("/"):
        raise RunbookError(f"OFFSITE_PREFIX={prefix!r} が不正です", "例: prod/ や knot/prod/", 2)
    endpoint = get("OFFSITE_ENDPOINT_URL")
    if endpoint and not re.match(r"^https?://[^\s/]+(/\S*)?$", endpoint):
        raise RunbookError(f"OFFSITE_ENDPOINT_URL={endpoint!r} が不正です",
                           "例: https://storage.googleapis.com, http://127.0.0.1:9000", exit_code=2)
    region = get("OFFSITE_REGION")
    if region and not re.match(r"^[a-z0-9-]{1,32}$", region):
        raise RunbookError(f"OFFSITE_REGION={region!r} が不正です", "例: ap-northeast-1", 2)
    recipients = tuple(r.strip() for r in get("OFFSITE_AGE_RECIPIENTS").split(",") if r.strip())
    for recipient in recipients:
        if not AGE_RECIPIENT.match(recipient):
            raise RunbookError(
                f"OFFSITE_AGE_RECIPIENTS の {recipient[:16]!r}… は age の公開鍵ではありません",
                "age-keygen -y <鍵ファイル> で表示される age1… を書く（秘密鍵は書かない）",
                exit_code=2,
            )
    return {
        "offsite_bucket": bucket,
        "offsite_prefix": prefix.rstrip("/") + "/",
        "offsite_region": region,
        "offsite_endpoint_url": endpoint,
        "offsite_age_recipients": recipients,
        "offsite_retention_days": _integer("OFFSITE_RETENTION_DAYS", get("OFFSITE_RETENTION_DAYS"), 1),
    }


NOTIFY_FORMATS = ("generic", "slack", "teams")


def _monitoring_values(env: str, config_dir: Path, get) -> dict[str, object]:
    """PING_URL, METRICS_FILE and NOTIFY_FORMAT (issue 13), validated."""
    ping = get("PING_URL")
    if ping and not re.match(r"^https?://[^\s/?#]+(/\S*)?$", ping):
        raise RunbookError("PING_URL は http:// か https:// で始まる URL で指定してください",
                           "例: https://hc-ping.com/<uuid>、https://kuma.example.jp/api/push/<token>",
                           exit_code=2)
    metrics_text = get("METRICS_FILE").replace("{env}", env)
    metrics = None
    if metrics_text:
        metrics = Path(metrics_text).expanduser()
        metrics = (metrics if metrics.is_absolute() else config_dir / metrics).resolve()
        if metrics.suffix != ".prom":
            raise RunbookError(f"METRICS_FILE={metrics_text!r} は .prom で終わる名前にしてください",
                               "node_exporter の textfile collector は *.prom だけを読みます"
                               "（例: /var/lib/prometheus/node-exporter/pgrunbook.prom）", exit_code=2)
    notify_format = get("NOTIFY_FORMAT").lower()
    if notify_format not in NOTIFY_FORMATS:
        raise RunbookError(f"NOTIFY_FORMAT={notify_format!r} は使えません",
                           f"{' / '.join(NOTIFY_FORMATS)} のどれかを指定", exit_code=2)
    return {"ping_url": ping, "metrics_file": metrics, "notify_format": notify_format}


OBJECT_LOCK_MODES = ("governance", "compliance")


def _guard_values(get) -> dict[str, object]:
    """The keys of issue 12: drift thresholds and the offsite object lock."""
    lock = get("OFFSITE_OBJECT_LOCK").lower()
    if lock and lock not in OBJECT_LOCK_MODES:
        raise RunbookError(f"OFFSITE_OBJECT_LOCK={lock!r} が不正です",
                           "governance か compliance（使わないなら空）", exit_code=2)
    drop = _integer("DRIFT_MAX_DROP", get("DRIFT_MAX_DROP"), 1)
    if drop > 100:
        raise RunbookError(f"DRIFT_MAX_DROP={drop} は 1〜100 で指定してください", exit_code=2)
    return {
        "drift_max_drop": drop,
        "drift_min_rows": _integer("DRIFT_MIN_ROWS", get("DRIFT_MIN_ROWS"), 0),
        "offsite_object_lock": lock,
    }


STANZA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONTAINER_PATH = re.compile(r"^(/[A-Za-z0-9._-]+)+/?$")


def _pitr_values(get) -> dict[str, object]:
    """The PITR_* keys (issue 15): pgBackRest's stanza, its repository, the scratch network."""
    stanza = get("PITR_STANZA")
    if stanza and not STANZA_NAME.match(stanza):
        raise RunbookError(f"PITR_STANZA={stanza!r} はスタンザ名として不正です",
                           "英数字と _ - . の 64 文字まで（pgbackrest.conf の [セクション名]）", 2)
    repo_path = get("PITR_REPO_PATH")
    if not CONTAINER_PATH.match(repo_path) or ".." in repo_path.split("/"):
        raise RunbookError(f"PITR_REPO_PATH={repo_path!r} はコンテナ内の絶対パスではありません",
                           "例: /var/lib/pgbackrest（pgbackrest.conf の repo1-path）", 2)
    network = get("PITR_SCRATCH_NETWORK")
    if not CONTAINER_NAME.match(network):
        raise RunbookError(f"PITR_SCRATCH_NETWORK={network!r} が不正です",
                           "none（ネットワークなし）か Docker のネットワーク名", 2)
    return {
        "pitr_stanza": stanza,
        "pitr_repo_path": repo_path.rstrip("/"),
        "pitr_scratch_network": network,
    }


def _audit_values(get) -> dict[str, object]:
    """FISCAL_YEAR_START and KEY_DRILL_MAX_AGE (issue 25)."""
    text = get("FISCAL_YEAR_START")
    match = re.match(r"^(\d{2})-(\d{2})$", text)
    try:
        start = date(2001, int(match.group(1)), int(match.group(2))) if match else None
    except ValueError:
        start = None
    if start is None:  # 2001 has no 29 February: a fiscal year cannot start on a day some years lack
        raise RunbookError(f"FISCAL_YEAR_START={text!r} が不正です",
                           "月-日の MM-DD で指定（例: 04-01、01-01）。02-29 は使えません", exit_code=2)
    try:
        max_age = parse_duration(get("KEY_DRILL_MAX_AGE"))
    except RunbookError as error:
        raise RunbookError(f"KEY_DRILL_MAX_AGE: {error.message}", error.hint, exit_code=2) from None
    return {"fiscal_year_start": (start.month, start.day), "key_drill_max_age": max_age}
