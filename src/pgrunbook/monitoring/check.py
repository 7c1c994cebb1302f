"""``invoke check``: the runbook's 1. 事前確認 as one screen (issue 13).

"Am I about to touch the right thing, and will it work?" Each line is OK, WARN
or NG with what to do; the exit code is 0 (all OK), 1 (a WARN) or 2 (an NG).
Like pgBackRest's ``check`` and Barman's ``check``: cheap enough to run before
every manual operation (the container is asked once through the Engine API,
the database once through one psql query returning JSON).

Nothing here changes anything and nothing writes the work log.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException

from pgrunbook.core import journal
from pgrunbook.core.console import human_size
from pgrunbook.core.durations import describe_age
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings, available_envs
from pgrunbook.infra import discovery
from pgrunbook.infra.container import Container
from pgrunbook.infra.postgres import Postgres
from pgrunbook.monitoring import schedule
from pgrunbook.offsite import keydrill
from pgrunbook.offsite import remote as offsite
from pgrunbook.restore import drill, prestage
from pgrunbook.store import inventory, select

OK, WARN, NG = "OK", "WARN", "NG"
LEVELS = {OK: 0, WARN: 1, NG: 2}
FRESH = timedelta(hours=26)
DRILL_FRESH = timedelta(days=8)
DEFAULT_PGDATA = "/var/lib/postgresql/data"

# Everything the check asks the server, in one round trip, as the kit's user in the
# target database: version, size, owner, and the privileges backup and replace need.
DATABASE_QUERY = """
SELECT json_build_object(
  'version', split_part(current_setting('server_version'), ' ', 1),
  'size', pg_database_size(current_database()),
  'owner', pg_get_userbyid(d.datdba),
  'user', current_user,
  'superuser', r.rolsuper,
  'createdb', r.rolcreatedb,
  'owner_member', pg_has_role(d.datdba, 'USAGE'),
  'owner_set', CASE WHEN current_setting('server_version_num')::int >= 160000
                    THEN pg_has_role(d.datdba, 'SET') ELSE true END,
  'tablespace', (SELECT t.spcname FROM pg_tablespace t WHERE t.oid = d.dattablespace),
  'tablespace_create', has_tablespace_privilege(d.dattablespace, 'CREATE'),
  'role_settings', (SELECT count(*) FROM pg_db_role_setting s
                    WHERE s.setdatabase = d.oid AND s.setrole <> 0),
  'signal_backend', pg_has_role('pg_signal_backend', 'MEMBER'),
  'read_all_data', EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'pg_read_all_data'
                           AND pg_has_role(g.oid, 'MEMBER')),
  'unreadable', (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'S', 'm')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
                   AND NOT (has_schema_privilege(n.oid, 'USAGE')
                            AND has_table_privilege(c.oid, 'SELECT'))),
  'data_directory', CASE WHEN pg_has_role('pg_read_all_settings', 'MEMBER')
                         THEN current_setting('data_directory') END,
  'prestaged', (SELECT coalesce(json_agg(json_build_array(
                  p.datname, shobj_description(p.oid, 'pg_database'), p.datallowconn,
                  CASE WHEN has_database_privilege(p.oid, 'CONNECT') THEN pg_database_size(p.oid) END)),
                  '[]'::json)
                FROM pg_database p
                WHERE shobj_description(p.oid, 'pg_database') LIKE 'pgrunbook:prestaged:%'))
FROM pg_database d, pg_roles r
WHERE d.datname = current_database() AND r.rolname = current_user
"""


@dataclass(frozen=True)
class Line:
    level: str
    topic: str
    text: str
    todo: str = ""

    def render(self) -> str:
        todo = f" → {self.todo}" if self.todo else ""
        return f"{self.level:<4} {self.topic}: {self.text}{todo}"


def exit_code(lines: list[Line]) -> int:
    return max((LEVELS[line.level] for line in lines), default=0)


class Checker:
    """Collects the lines; a failing probe becomes an NG line, never a traceback."""

    def __init__(self, settings: Settings, now: datetime | None = None) -> None:
        self.settings = settings
        self.now = now or datetime.now()
        self.lines: list[Line] = []
        self.client: Any = None
        self.engine_info: dict[str, Any] = {}
        self.model: Any = None
        self.database: dict[str, Any] | None = None
        self.items: list[inventory.Inventoried] | None = None

    def add(self, level: str, topic: str, text: str, todo: str = "") -> None:
        self.lines.append(Line(level, topic, text, todo))

    def probe(self, topic: str, action: Callable[[], None]) -> None:
        try:
            action()
        except RunbookError as error:
            self.add(NG, topic, error.message, error.hint)

    def run(self) -> list[Line]:
        self.environment()
        self.probe("エンジン", self.engine)
        self.probe("中断", self.interrupted)
        if self.client is not None:
            self.probe("コンテナ", self.container)
        if self.model is not None:
            self.probe("分離", self.separation)
            self.probe("DB", self.query_database)
        if self.database is not None:
            self.probe("事前展開", self.prestaged)
        self.probe("バックアップ先", self.backup_folder)
        self.probe("設定ファイル", self.env_files)
        self.probe("最新のバックアップ", self.newest_backup)
        self.probe("復元訓練", self.last_drill)
        self.probe("cron", self.cron)
        if self.settings.offsite_bucket:
            self.probe("オフサイト", self.offsite)
            self.probe("鍵の訓練", self.key_drill)
        return self.lines

    # ---- what we are about to touch ----------------------------------------------------
    def environment(self) -> None:
        s = self.settings
        kind = "保護環境（他の環境のバックアップを戻すには承認が必要）" if s.protected else "保護なし"
        files = ", ".join(path.name for path in s.files)
        self.add(OK, "環境", f"{s.env}（{kind}、設定 {files}、対象 {discovery.reference(s)} の "
                              f"{s.db_name}、ユーザー {s.db_user}）")

    def engine(self) -> None:
        where = os.environ.get("DOCKER_HOST") or "ローカル（/var/run/docker.sock）"
        try:
            client = docker.from_env(timeout=10)
            info = client.info()
        except DockerException as error:
            raise RunbookError(f"DOCKER_HOST={where} の Docker Engine に接続できません",
                               "systemctl status docker / docker version、DOCKER_HOST を確認") from error
        self.client, self.engine_info = client, info
        self.add(OK, "エンジン", f"DOCKER_HOST={where}（ホスト {info.get('Name', '?')}、"
                                f"Docker {info.get('ServerVersion', '?')}）")

    def interrupted(self) -> None:
        """A replace or rollback that did not finish (the journal): NG while it is unrepaired,
        naming the apps it stopped that are still stopped."""
        s = self.settings
        record = journal.read(s)
        if record is None:
            return
        what = (f"{record.get('task', '?')}（開始 {record.get('started_at', '?')}、"
                f"{record.get('operator', '?')}、ホスト {record.get('host', '?')}、"
                f"段階 {record.get('stage', '?')}）")
        if journal.is_alive(record):
            self.add(WARN, "中断", f"{what} が実行中です", "終わるのを待ってから作業する")
            return
        apps = [name for name in record.get("apps_stopped") or [] if not self._app_running(name)]
        stopped = f"。停止したままのアプリ: {', '.join(apps)}" if apps else ""
        todo = f"invoke restore-recover --env={s.env} で確認・修復"
        other = journal.other_host(record)
        if other:
            todo = journal.elsewhere_hint(s, other)
        self.add(NG, "中断", f"{what} が途中で止まったままです{stopped}", todo)

    def _app_running(self, name: str) -> bool:
        if self.client is None:
            return False
        try:
            return self.client.containers.get(name).status == "running"
        except DockerException:
            return False

    def container(self) -> None:
        model = discovery.find_db_container(self.settings, self.client)
        self.model = model
        state = model.attrs.get("State") or {}
        health = (state.get("Health") or {}).get("Status") or "healthcheck なし"
        image = (model.attrs.get("Config") or {}).get("Image") or "?"
        labels = model.labels or {}
        compose = ""
        if labels.get(discovery.SERVICE_LABEL):
            compose = (f"、Compose {labels.get(discovery.PROJECT_LABEL)}/"
                       f"{labels.get(discovery.SERVICE_LABEL)}")
        text = (f"{model.name}（ID {model.id[:12]}、イメージ {image}、health {health}、"
                f"稼働 {self._uptime(state.get('StartedAt', ''))}{compose}）")
        if health in ("unhealthy", "starting"):
            self.add(WARN, "コンテナ", text, f"docker inspect {model.name} の State.Health を確認")
        else:
            self.add(OK, "コンテナ", text)

    def _uptime(self, started: str) -> str:
        try:
            moment = datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00")
        except ValueError:
            return "?"
        return describe_age(datetime.now(timezone.utc) - moment)

    def separation(self) -> None:
        others = discovery.envs_sharing_database(self.settings, self.model.id, self.client)
        if others:
            error = discovery.same_database_error(self.settings, self.model, others)
            self.add(NG, "分離", f"!!! {error.message} !!!", error.hint)
            return
        envs = [env for env in available_envs(self.settings.config_dir) if env != self.settings.env]
        listing = f"（{', '.join(envs)} とは別の DB）" if envs else "（他の環境の設定はありません）"
        self.add(OK, "分離", f"コンテナ ID と DB 名で他の環境と重なりません{listing}")

    def query_database(self) -> None:
        pg = Postgres(Container(self.client, self.model), self.settings)
        raw = json.loads(pg.query(DATABASE_QUERY)[0][0])
        self.database = raw
        size = human_size(int(raw["size"]))
        self.add(OK, "DB", f"{self.settings.db_name}（{size}、PostgreSQL {raw['version']}、"
                           f"所有者 {raw['owner']}）")
        user = raw["user"]
        if raw["superuser"]:
            self.add(OK, "権限", f"{user} はスーパーユーザー（バックアップ・置き換えとも可）")
            return
        if raw["read_all_data"] or int(raw["unreadable"]) == 0:
            self.add(OK, "権限（バックアップ）", f"{user} はすべてのテーブル・シーケンスを読めます")
        else:
            self.add(NG, "権限（バックアップ）",
                     f"{user} が読めないテーブル・シーケンスが {raw['unreadable']} 個あります",
                     f"GRANT pg_read_all_data TO {user};（PostgreSQL 14+）か各スキーマへ GRANT USAGE / "
                     "SELECT")
        missing = []
        if not raw["owner_member"]:
            missing.append(f"DB の所有者 {raw['owner']} の権限（GRANT {raw['owner']} TO {user}、"
                           f"または ALTER DATABASE {self.settings.db_name} OWNER TO {user}）")
        elif not raw.get("owner_set", True):  # 16+: a membership granted WITH SET FALSE
            missing.append(f"所有者 {raw['owner']} への SET ROLE"
                           f"（GRANT {raw['owner']} TO {user} WITH SET TRUE）")
        if not raw["createdb"]:
            missing.append(f"CREATEDB（ALTER ROLE {user} CREATEDB）")
        if not raw["signal_backend"]:
            missing.append(f"他のセッションの切断（GRANT pg_signal_backend TO {user}）")
        if raw["tablespace"] != "pg_default" and not raw["tablespace_create"]:
            missing.append(f"表領域 {raw['tablespace']} への DB の作成"
                           f"（GRANT CREATE ON TABLESPACE {raw['tablespace']} TO {user}）")
        if int(raw["role_settings"]):
            missing.append("ALTER ROLE … IN DATABASE の設定を写すこと（superuser のみ）")
        if missing:
            self.add(WARN, "権限（置き換え）", f"{user} には restore-replace に必要な権限がありません: "
                                         + "、".join(missing), "スーパーユーザーで上の GRANT / ALTER を実行")
        else:
            wait = f"{self.settings.replace_session_wait:g} 秒"
            self.add(OK, "権限（置き換え）",
                     f"{user} は所有者 {raw['owner']} の権限・CREATEDB・pg_signal_backend を持っています"
                     f"（superuser のセッションは終了できないため、置き換えはアプリを止める前にそれが"
                     f"終わるのを REPLACE_SESSION_WAIT（{wait}）まで待ち、残れば中止します）")

    def prestaged(self) -> None:
        """RESTORE_PRESTAGE: is the newest backup ready to be swapped in (prestage.py)?"""
        assert self.database is not None
        s = self.settings
        found = prestage.from_rows(s.env, [(name, comment, bool(allow), int(size or 0))
                                           for name, comment, allow, size in self.database["prestaged"]])
        if not s.restore_prestage:
            for p in found:
                self.add(WARN, "事前展開", f"RESTORE_PRESTAGE=false ですが {p.describe()} が残っています",
                         f"不要なら invoke restore-drop --env={s.env} --db={p.name}")
            return
        if not found:
            self.add(WARN, "事前展開", "事前展開 DB はありません（置き換えはファイルからの復元になります）",
                     f"invoke verify --env={s.env} --restore-test（最新のバックアップで作ります）")
            return
        newest = select.sound(self._inventory())
        current = found[-1]
        for older in found[:-1]:  # a restore test stopped before it dropped the one it replaced
            self.add(WARN, "事前展開",
                     f"古い事前展開 DB {older.describe()} も残っています（DB 1 つ分のディスク）",
                     f"invoke restore-drop --env={s.env} --db={older.name}")
        redo = f"invoke verify --env={s.env} --restore-test で作り直す"
        if current.open:
            self.add(WARN, "事前展開", f"{current.describe()} は接続を受け付ける状態にされています"
                                   "（書き込まれた可能性があるため置き換えでは使いません）", redo)
        elif not newest or newest[-1].name != current.file:
            latest = newest[-1].name if newest else "なし"
            self.add(WARN, "事前展開", f"{current.describe()} は最新のバックアップ（{latest}）のものでは"
                                   "ありません", redo)
        else:
            self.add(OK, "事前展開", f"{current.describe()}: restore-replace --file={current.file} は"
                                 "復元を省いて切り替えます（ディスクを DB 1 つ分使用）")

    # ---- where the backups go ------------------------------------------------------
    def backup_folder(self) -> None:
        folder = self.settings.backup_dir
        if not folder.exists():
            self.add(WARN, "バックアップ先", f"{folder} はまだありません（最初の backup が 0700 で作ります）",
                     f"invoke backup --env={self.settings.env}")
        else:
            info = folder.stat()
            mode = stat.S_IMODE(info.st_mode)
            owner = _user_name(info.st_uid)
            problems, todo = [], []
            if mode != 0o700:
                problems.append(f"モード {mode:04o}（0700 であるべき）")
                todo.append(f"chmod 700 {folder}")
            if info.st_uid != os.geteuid():
                problems.append(f"所有者 {owner}（実行ユーザー {_user_name(os.geteuid())} ではない）")
                todo.append(f"chown {_user_name(os.geteuid())} {folder}")
            if problems:
                self.add(WARN, "バックアップ先", f"{folder}: " + "、".join(problems), " / ".join(todo))
            else:
                self.add(OK, "バックアップ先", f"{folder}（0700、所有者 {owner}）")
        self._free_space(folder)
        self._filesystem(folder)

    def _inventory(self) -> list[inventory.Inventoried]:
        if self.items is None:
            self.items = inventory.inventory(self.settings, with_globals=False, now=self.now)
        return self.items

    def _free_space(self, folder: Path) -> None:
        existing = _existing_parent(folder)
        free = shutil.disk_usage(existing).free
        items = self._inventory()
        last = items[-1].size if items else 0
        if not last:
            self.add(OK, "空き容量", f"{human_size(free)}（比べる前回のバックアップはまだありません）")
        elif free < last:
            self.add(NG, "空き容量",
                     f"{human_size(free)}: 前回のバックアップ {human_size(last)} が入りません",
                     f"古いものを invoke prune --env={self.settings.env} で削除するか容量を増やす")
        elif free < 2 * last:
            self.add(WARN, "空き容量",
                     f"{human_size(free)}: 前回のバックアップ {human_size(last)} の 2 倍未満",
                     f"invoke prune --env={self.settings.env} か容量の追加を検討")
        else:
            self.add(OK, "空き容量", f"{human_size(free)}（前回のバックアップ {human_size(last)} の "
                                   f"{free // last} 倍）")

    def _filesystem(self, folder: Path) -> None:
        if self.model is None:
            return
        source, named = self._data_mount()
        if source is None:
            self.add(WARN, "DB のボリューム",
                     f"{self.model.name} のデータ（{named}）はボリュームではなくコンテナ内にあります"
                     "（docker rm で DB ごと消えます）", "compose.yaml / docker run -v でボリュームに置く")
            source = self.engine_info.get("DockerRootDir") or ""
        host = os.environ.get("DOCKER_HOST", "")
        if host and not host.startswith("unix://"):
            self.add(OK, "DB のボリューム",
                     f"エンジンが別ホスト（{host}）のため、バックアップ先とは別のマシンです")
            return
        device = _device_of(source) or _device_of(self.engine_info.get("DockerRootDir") or "")
        mine = _device_of(str(_existing_parent(folder)))
        if device is None or mine is None:
            self.add(WARN, "DB のボリューム", f"{source} とバックアップ先が同じディスクか判定できません",
                     f"df {folder} {source} で確認")
        elif device == mine:
            self.add(WARN, "DB のボリューム",
                     f"バックアップ先は DB のデータ（{source}）と同じファイルシステムです"
                     "（そのディスクが壊れると両方失います）",
                     f"別のディスクに BACKUP_DIR を置くか invoke offsite-push --env={self.settings.env}")
        else:
            self.add(OK, "DB のボリューム", f"バックアップ先は DB のデータ（{source}）と別のファイルシステム")

    def _data_mount(self) -> tuple[str | None, str]:
        data = (self.database or {}).get("data_directory") or _pgdata(self.model) or DEFAULT_PGDATA
        mounts = self.model.attrs.get("Mounts") or []
        best = None
        for mount in mounts:
            destination = mount.get("Destination", "").rstrip("/")
            inside = data == destination or data.startswith(destination + "/")
            if inside and (best is None or len(destination) > len(best.get("Destination", ""))):
                best = mount
        if best is None:
            return None, data
        return best.get("Source") or best.get("Name") or "", data

    def env_files(self) -> None:
        folder = self.settings.config_dir
        paths = [folder / ".env"] + [folder / f".env.{env}" for env in available_envs(folder)]
        loose = []
        for path in paths:
            if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
                loose.append(f"{path.name}（{stat.S_IMODE(path.stat().st_mode):04o}）")
        if loose:
            self.add(WARN, "設定ファイル", "他のユーザーが読めます: " + ", ".join(loose),
                     "chmod 600 " + " ".join(str(folder / n.split("（")[0]) for n in loose))
        else:
            names = ", ".join(p.name for p in paths if p.is_file())
            self.add(OK, "設定ファイル", f"{names} は 0600（本人だけが読める）")

    # ---- has it been working ----------------------------------------------------------
    def newest_backup(self) -> None:
        env = self.settings.env
        self._future_dated()
        items = [item for item in self._inventory() if not item.future]  # never "the newest"
        if not items:
            self.add(WARN, "最新のバックアップ", "まだありません", f"invoke backup --env={env}")
            return
        newest = items[-1]
        age = max(self.now - newest.backup.created, timedelta(0))  # within the tolerance: "0分前"
        text = f"{newest.name}（{describe_age(age)}前、{human_size(newest.size)}）"
        if newest.checksum not in (inventory.CHECKSUM_OK,):
            self.add(NG, "最新のバックアップ", f"{text}: チェックサム {newest.checksum}",
                     f"invoke verify --env={env} --file={newest.backup.path}")
        elif not newest.verified:
            self.add(WARN, "最新のバックアップ", f"{text}: 未検証", f"invoke verify --env={env}")
        elif age > FRESH:
            self.add(WARN, "最新のバックアップ", f"{text}: {describe_age(FRESH)}より古い",
                     "cron と backups/<env>/cron.log を確認")
        else:
            self.add(OK, "最新のバックアップ", f"{text}、検証済み {newest.verified_at}")

    def _future_dated(self) -> None:
        """Backups dated in the future (a clock was wrong): one NG line naming the worst."""
        future = [item for item in self._inventory() if item.future]
        if not future:
            return
        worst = max(future, key=lambda item: item.ahead or timedelta(0))
        more = f" ほか {len(future) - 1} 件" if len(future) > 1 else ""
        self.add(NG, "未来の日時のバックアップ",
                 f"{worst.name}（{describe_age(worst.ahead or timedelta(0))}先）{more}: "
                 "最新とはみなしません",
                 "ホストの時計を確認（timedatectl）。時計が正しければファイルの日時が誤りなので、"
                 "その一式（.sha256・.json も）を別の場所へ移す")

    def last_drill(self) -> None:
        lines = drill.drills(self.settings)
        env = self.settings.env
        if not lines:
            self.add(WARN, "復元訓練", "記録がありません", f"invoke verify --env={env} --restore-test")
            return
        last = lines[-1]
        when = str(last.get("time", ""))
        text = (f"{when[:16]} {Path(str(last.get('file'))).name}: {last.get('result')}、"
                f"復旧 {float(last.get('duration_seconds') or 0):.1f} 秒")
        try:
            age = datetime.now(timezone.utc) - datetime.fromisoformat(when)
        except ValueError:
            age = DRILL_FRESH * 2
        if last.get("result") != "ok":
            passed = [line for line in lines if line.get("result") == "ok"]
            since = (f"。最後に成功した訓練は {str(passed[-1].get('time'))[:16]}" if passed
                     else "。成功した訓練はまだありません")
            self.add(NG, "復元訓練", f"{text}（{last.get('error') or ''}）{since}",
                     f"invoke verify --env={env} --restore-test で原因を確認")
        elif age > DRILL_FRESH:
            self.add(WARN, "復元訓練", f"{text}（{describe_age(age)}前）",
                     f"invoke verify --env={env} --restore-test")
        else:
            self.add(OK, "復元訓練", text)

    def key_drill(self) -> None:
        """The escrowed key tried on an offsite copy within KEY_DRILL_MAX_AGE (keydrill.assess)."""
        state = keydrill.assess(self.settings, self.now.timestamp())
        if state is None:
            return
        level = {"ok": OK, "stale": WARN, "failed": NG}[state.level]
        self.add(level, "鍵の訓練", state.text, state.todo)

    def cron(self) -> None:
        try:
            lines = schedule.read_crontab()
        except RunbookError as error:
            self.add(WARN, "cron", error.message, error.hint)
            return
        _, block = schedule.without_block(lines, self.settings.env)
        if block is None:
            self.add(WARN, "cron", f"pgrunbook {self.settings.env} の定期実行は登録されていません",
                     f"invoke crontab --env={self.settings.env} --install")
        else:
            jobs = [line for line in block if line.strip() and not line.startswith("#")
                    and "=" not in line.split()[0]]
            self.add(OK, "cron", f"登録済み（{len(jobs)} 件のジョブ、crontab -l で確認）")

    def offsite(self) -> None:
        remote = offsite.Remote(self.settings)
        from botocore.config import Config

        short = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1},
                       ignore_configured_endpoint_urls=True,
                       s3={"addressing_style": "path" if self.settings.offsite_endpoint_url else "auto"})
        with remote.errors("オフサイト"):
            import boto3

            remote.client = boto3.session.Session().client(
                "s3", region_name=self.settings.offsite_region or None,
                endpoint_url=self.settings.offsite_endpoint_url or None, config=short)
        remote.probe()
        self.add(OK, "オフサイト", f"{remote.location} に接続できます")


def run_check(settings: Settings, now: datetime | None = None) -> list[Line]:
    return Checker(settings, now).run()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _device_of(path: str) -> int | None:
    if not path:
        return None
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _pgdata(model: Any) -> str | None:
    for item in (model.attrs.get("Config") or {}).get("Env") or []:
        if item.startswith("PGDATA="):
            return item.split("=", 1)[1]
    return None
