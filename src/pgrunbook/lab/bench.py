"""Benchmark: the runbook's hand procedure against the kit's tasks, side by side.

Creates a disposable PostgreSQL container (no network) of the image asked for
with a realistic dataset of a given size (ledger rows, JSON audit payloads,
random text) and a small app container (named in APP_CONTAINERS, stops at
once on SIGTERM), then alternates, for N rounds, the runbook's hand commands
(docker CLI: ``pg_dump -F c -f`` + ``docker cp``; DROP, CREATE, ``docker
cp``, ``pg_restore``) and the kit's tasks (``invoke backup``, ``invoke
restore-replace``), the kit once per compression format asked for (on
PostgreSQL 16+: gzip:1, lz4, zstd:1, zstd:3). It also measures the write
downtime of a replace: for the kit, from the engine's ``kill`` event of the app
container (its stop) to its ``start`` event; by hand, from the first DROP to
the end of pg_restore. Reports medians, ratios, the kit's peak RSS and the
archive sizes as JSON and Markdown. Nothing here asserts a time: the numbers
are for people to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pgrunbook
from pgrunbook.infra import versions
from pgrunbook.infra.container import Container, engine
from pgrunbook.infra.postgres import EXACT_ROWS, USER_TABLES_FROM
from pgrunbook.lab.sandbox import sample_sql

ROOT = Path(__file__).resolve().parents[3]
USER = "app"
# issue 14's targets (the backup's: 0.5 before PostgreSQL 16, 0.35 from 16 with its faster formats)
# and issue 24's (the restore step against a bare pg_restore of the same file; 1.0 on few large tables)
TARGETS = {"backup_ratio": 0.5, "backup_ratio_16": 0.35, "restore_ratio": 0.85, "restore_ratio_large": 1.0,
           "restore_step_ratio": 1.05,
           "downtime_seconds": 0.5, "downtime_ratio": 0.05, "tiny_overhead_seconds": 0.35,
           "peak_rss_mb": 60, "prestaged_ratio": 0.1}
NEWER_FORMATS = ("gzip:1", "lz4", "zstd:1", "zstd:3")
QUARTER = "@quarter"  # the names of the steps timed at a quarter of the size
PRESTAGED = "@prestaged"  # the replace of a backup the restore test kept prestaged

# One batch adds roughly 40 MB: ledger lines with Japanese memos, JSON audit
# payloads and documents of random text (hex and words: compressible about as
# much as real application data, unlike pgbench's filler).
SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS accounting;
CREATE SCHEMA IF NOT EXISTS audit;
CREATE TABLE IF NOT EXISTS accounting.ledger (
    id bigserial PRIMARY KEY, posted_on date NOT NULL, account text NOT NULL,
    amount numeric(14,2) NOT NULL, memo text NOT NULL);
CREATE TABLE IF NOT EXISTS audit.events (
    id bigserial PRIMARY KEY, at timestamptz NOT NULL, payload jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS public.documents (
    id bigserial PRIMARY KEY, title text NOT NULL, body text NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_posted_on ON accounting.ledger (posted_on);
CREATE INDEX IF NOT EXISTS events_at ON audit.events (at);
"""
BATCH_SQL = """
INSERT INTO accounting.ledger (posted_on, account, amount, memo)
SELECT date '2020-01-01' + (random() * 2000)::int,
       (ARRAY['現金','普通預金','売掛金','未払金','会費収入','旅費交通費'])[1 + (random() * 5)::int],
       round((random() * 1000000)::numeric, 2),
       (ARRAY['会費','備品','交通費','会場費','印刷費','寄付'])[1 + (random() * 5)::int]
         || ' ' || md5(random()::text) || ' 承認番号 ' || (random() * 100000)::int
FROM generate_series(1, 120000 * {scale});
INSERT INTO audit.events (at, payload)
SELECT now() - random() * interval '900 days',
       jsonb_build_object('user', 'member' || (random() * 500)::int, 'action',
         (ARRAY['login','vote','approve','edit','export'])[1 + (random() * 4)::int],
         'ip', '192.0.2.' || (random() * 250)::int, 'detail', md5(random()::text),
         'diff', jsonb_build_object('before', md5(random()::text), 'after', md5(random()::text)))
FROM generate_series(1, 80000 * {scale});
INSERT INTO public.documents (title, body)
SELECT '議事録 第' || g || '回',
       repeat(md5(random()::text) || ' ', 6) || (ARRAY['賛成多数で可決','継続審議','否決'])[1 + g % 3]
FROM generate_series(1, 40000 * {scale}) AS g;
"""

# issue 14's "few large tables": two tables only (2.5 M and 2 M rows at 985 MB,
# in that proportion at any size), jsonb, a primary key and one more index each.
# pg_restore -j has little to share out here: two COPYs and four index builds.
LARGE_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS public.orders (
    id bigserial PRIMARY KEY, customer_id int NOT NULL, ordered_at timestamptz NOT NULL,
    status text NOT NULL, total numeric(12,2) NOT NULL, items jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS public.events (
    id bigserial PRIMARY KEY, at timestamptz NOT NULL, kind text NOT NULL, payload jsonb NOT NULL);
CREATE INDEX IF NOT EXISTS orders_customer ON public.orders (customer_id);
CREATE INDEX IF NOT EXISTS events_at ON public.events (at);
"""
LARGE_BATCH_SQL = """
INSERT INTO public.orders (customer_id, ordered_at, status, total, items)
SELECT (random() * 200000)::int, now() - random() * interval '1000 days',
       (ARRAY['paid','shipped','cancelled','refunded'])[1 + (random() * 3)::int],
       round((random() * 100000)::numeric, 2),
       jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (random() * 9999)::int,
         'qty', 1 + (random() * 4)::int, 'note', md5(random()::text)),
         jsonb_build_object('sku', 'SKU-' || (random() * 9999)::int, 'qty', 1))
FROM generate_series(1, 250000 * {scale});
INSERT INTO public.events (at, kind, payload)
SELECT now() - random() * interval '900 days',
       (ARRAY['login','view','cart','checkout','logout'])[1 + (random() * 4)::int],
       jsonb_build_object('user', 'member' || (random() * 50000)::int,
         'ip', '192.0.2.' || (random() * 250)::int,
         'detail', md5(random()::text))
FROM generate_series(1, 200000 * {scale});
"""
# name -> (schema, one batch, about how many MiB a batch adds)
DATASETS = {"default": (SCHEMA_SQL, BATCH_SQL, 40),
            "large-tables": (LARGE_SCHEMA_SQL, LARGE_BATCH_SQL, 130)}


@dataclass
class Measurements:
    times: dict[str, list[float]] = field(default_factory=dict)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    steps: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # run -> step -> seconds
    timelines: dict[str, list[list[Any]]] = field(default_factory=dict)  # the last run's kit lines
    counts: dict[str, list[int]] = field(default_factory=dict)  # what was seen after a step

    def add_steps(self, name: str, steps: dict[str, float]) -> None:
        for step, seconds in steps.items():
            self.steps.setdefault(name, {}).setdefault(step, []).append(round(seconds, 3))

    def step_medians(self) -> dict[str, dict[str, float]]:
        return {name: {step: round(statistics.median(values), 3) for step, values in steps.items()}
                for name, steps in self.steps.items()}

    def add(self, name: str, seconds: float, rss_mb: float | None = None) -> None:
        self.times.setdefault(name, []).append(round(seconds, 3))
        if rss_mb is not None:
            self.rss_mb.setdefault(name, []).append(round(rss_mb, 1))

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


@dataclass(frozen=True)
class Run:
    seconds: float
    rss_mb: float
    stdout: str

    @property
    def last_line(self) -> str:
        return self.stdout.strip().splitlines()[-1]


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run a command; return its wall time, its own peak RSS (MB) and its stdout."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stdout = process.stdout.read() if process.stdout else b""
    stderr = process.stderr.read() if process.stderr else b""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({code}): {stderr.decode()[-2000:]}")
    return Run(seconds, usage.ru_maxrss / 1024, stdout.decode())


def _run_traced(argv: list[str], env: dict[str, str]) -> tuple[Run, list[tuple[float, str]]]:
    """``_run`` that also keeps every stderr line of the kit (its steps, with
    PGRUNBOOK_VERBOSE=1) with the wall-clock time it arrived; the first entry
    is the process start."""
    lines: list[tuple[float, str]] = [(time.time(), "(start)")]
    started = time.perf_counter()
    process = subprocess.Popen(argv, env={**env, "PGRUNBOOK_VERBOSE": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stderr is not None

    def read() -> None:
        for raw in process.stderr:  # type: ignore[union-attr]
            lines.append((time.time(), raw.decode("utf-8", "replace").rstrip()))

    reader = threading.Thread(target=read)
    reader.start()
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    ended = time.time()
    reader.join()
    stdout = process.stdout.read() if process.stdout else b""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        text = "\n".join(line for _stamp, line in lines)
        raise RuntimeError(f"{' '.join(argv)} failed ({code}): {text[-2000:]}")
    lines.append((ended, "(end)"))
    return Run(seconds, usage.ru_maxrss / 1024, stdout.decode()), lines


# The kit's console steps of a replace, by the start of their line: each step's
# time runs from its line to the next one (the first: process start to the first line).
STEP_NAMES = (
    ("(start)", "起動・確認（ファイル、サーバー、版、確認の表示）"),
    ("  所有者", "staging DB の作成・空き容量の確認"),
    ("  復元       : 事前展開", "事前展開 DB の取得（閉じたまま・同じ印かを確かめて開く）"),
    ("・事前展開 DB", "行の証明（統計とカタログ）、所有者・権限の比較"),
    ("置き換え完了", "終了"),
    ("・アーカイブをコンテナへ送る", "アーカイブの送信（sha256 を同時に計算）"),
    ("・pg_restore", "staging への復元（pg_restore）"),
    ("・psql", "staging への復元（psql）"),
    ("・復元完了", "行数・スキーマの照合、所有者・権限の比較"),
    ("・復元したデータをディスクに書き出し", "CHECKPOINT（アプリの停止前）"),
    ("・所有者・権限", "所有者・権限の複写と再比較"),
    ("・稼働中の DB にだけ", "（スキーマの違いの表示）"),
    ("・アプリのコンテナ", "アプリの停止 / 再開"),
    ("・切り替え", "接続の切断と名前の入れ替え"),
    ("・プランナー統計", "DB 単位の設定の確認・結果の表示"),
    ("・(bench) 入れ替え終了", "アプリの再開（docker start）"),
    ("・(bench) pg_restore", "staging への復元（pg_restore）"),
)


def kit_pg_restore(lines: list[tuple[float, str]]) -> tuple[float, float] | None:
    """The kit's own pg_restore call, as the hook saw it: its seconds (between the hook's
    start and end lines, nothing of the kit around it) and the container's CPU seconds."""
    marks = {line.split()[2]: (stamp, line) for stamp, line in lines
             if line.startswith("・(bench) pg_restore ")}
    if not {"start", "end", "CPU"} <= set(marks):
        return None
    return marks["end"][0] - marks["start"][0], float(marks["CPU"][1].split()[-1])


def step_times(lines: list[tuple[float, str]], names: tuple[tuple[str, str], ...] = STEP_NAMES,
               other: str | None = "その他（結果の表示など）") -> dict[str, float]:
    """Seconds per named step (a name seen twice adds up; the first prefix that matches
    names a line). A line no prefix names counts as ``other``, or with ``other=None``
    as the step before it."""
    steps: dict[str, float] = {}
    current = other or names[0][1]
    for (stamp, line), (next_stamp, _next) in zip(lines, lines[1:], strict=False):
        name = next((label for prefix, label in names if line.startswith(prefix)), None)
        current = name or other or current
        steps[current] = steps.get(current, 0.0) + next_stamp - stamp
    return steps


# The container's CPU time so far, in nanoseconds (cgroup v1 or v2): what a step made
# the server and the tools inside it do, whatever else the host was busy with.
CPU_SECONDS = ("cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null "
               "|| sed -n 's/^usage_usec \\([0-9]*\\)/\\1000/p' /sys/fs/cgroup/cpu.stat")


# Experiment variants of the kit, applied through a sitecustomize module on the
# kit's PYTHONPATH (the kit's code is not changed for them): each name adds one
# thing to a replace, measured beside the plain kit in the same run.
VARIANT_HOOK = r'''
import os
import sys
import threading
CPU_SECONDS = @CPU_SECONDS@
variants = set(filter(None, os.environ.get("PGRUNBOOK_BENCH_VARIANTS", "").split(",")))
if os.environ.get("PGRUNBOOK_BENCH_TRACE") == "1":
    from pgrunbook.infra import postgres as _postgres
    from pgrunbook.restore import replace as _replace

    _swap = _replace.swap_databases

    def swap_databases(*args, **kwargs):
        try:
            return _swap(*args, **kwargs)
        finally:
            sys.stderr.write("・(bench) 入れ替え終了\n")
            sys.stderr.flush()

    _replace.swap_databases = swap_databases

    _run = _postgres.Postgres.run
    post_data = {}

    def memory_sixteenth(self):
        """maintenance_work_mem sized from the server's memory: 1/16 of the container's
        limit (or the host's memory), at least 64 MB and at most 2 GB."""
        found = _run(self, ["sh", "-c", "cat /sys/fs/cgroup/memory.max "
                            "/sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; "
                            "sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo"]).stdout.split()
        sizes = [int(x) for x in found[:-1] if x.isdigit()] + [int(found[-1]) * 1024]
        return f"{max(64, min(2048, min(sizes) // 16 // 2**20))}MB"

    def container_cpu(self):
        return float(_run(self, ["sh", "-c", CPU_SECONDS]).stdout.split()[0]) / 1e9

    def run(self, argv, *, stdin=None, on_stdout=None, environment=None, **more):
        if argv and argv[0] == "pg_restore" and "--list" not in argv:
            before = container_cpu(self)
            sys.stderr.write("・(bench) pg_restore start\n")
            sys.stderr.flush()
            try:
                return restore(self, argv, stdin=stdin, on_stdout=on_stdout, environment=environment, **more)
            finally:
                sys.stderr.write("・(bench) pg_restore end\n")
                sys.stderr.flush()
                sys.stderr.write(f"・(bench) pg_restore CPU {container_cpu(self) - before:.3f}\n")
                sys.stderr.flush()
        return _run(self, argv, stdin=stdin, on_stdout=on_stdout, environment=environment, **more)

    def restore(self, argv, *, stdin=None, on_stdout=None, environment=None, **more):
        options = []
        if "mwm" in variants:
            options.append("-c maintenance_work_mem=256MB")
        if "mwm-auto" in variants:
            options.append("-c maintenance_work_mem=" + memory_sixteenth(self))
        if "nosync" in variants:
            options.append("-c synchronous_commit=off")
        if options:
            environment = {**(environment or {}), "PGOPTIONS": " ".join(options)}
        if "section" in variants and stdin is None:
            # schema and data now; the indexes and constraints (post-data) on a
            # thread of their own while the kit checks the row counts
            first = _run(self, argv[:-1] + ["--section=pre-data", "--section=data", argv[-1]],
                         on_stdout=on_stdout, environment=environment)
            if first.ok:  # (a link: the kit removes its upload once this call returns)
                kept = "/tmp/pgrunbook-bench-post-data.dump"
                _run(self, ["ln", "-f", argv[-1], kept])

                def post():
                    post_data["result"] = _run(self, argv[:-1] + ["--section=post-data", kept],
                                               environment=environment)
                    _run(self, ["rm", "-f", kept])

                thread = threading.Thread(target=post)
                thread.start()
                post_data["thread"] = thread
            return first
        return _run(self, argv, stdin=stdin, on_stdout=on_stdout, environment=environment, **more)

    _postgres.Postgres.run = run
    if "section" in variants:
        _checks = _replace._check_staging

        def check_staging_beside_post_data(run):
            summary = _checks(run)
            post_data["thread"].join()
            if not post_data["result"].ok:
                raise RuntimeError("post-data: " + post_data["result"].stderr)
            sys.stderr.write("・(bench) post-data 終了\n")
            return summary

        _replace._check_staging = check_staging_beside_post_data
    if "stream" in variants:  # the kit before issue 24: -j 1 fed through the exec's stdin
        from pgrunbook.restore import staging as _staging

        _streams = _staging.archive_streams
        _staging.archive_streams = lambda pg, facts, source, jobs: (
            _streams(pg, facts, source, jobs) or jobs == 1)
    if "notxsize" in variants:  # pg_restore 17+ without --transaction-size
        from pgrunbook.restore import staging as _staging

        _staging.restore_options = lambda facts, jobs: []
    if "jobs2" in variants:
        from pgrunbook.restore import staging as _staging

        _staging.settings_jobs = lambda settings, pg: 2
    if "nocheckpoint" in variants:  # the kit as it was before its CHECKPOINT before the apps stop
        _replace.flush_restored_data = lambda pg, console: None
    if "checkpoint" in variants:  # (the kit does it itself now: for measuring older versions)
        _check = _replace._check_staging

        def check_staging(run):
            summary = _check(run)
            run.pg.execute("CHECKPOINT", "postgres")
            return summary

        _replace._check_staging = check_staging
'''.replace("@CPU_SECONDS@", repr(CPU_SECONDS))


def _psql(container: Container, sql: str, database: str = "app") -> str:
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", USER, "-d", database, "-A", "-t", "-c", sql]
    # a read is framed and asked again when the engine lost its answer (framing.py);
    # a write's answer is its exit code
    reads = sql.lstrip().upper().startswith(("SELECT", "SHOW"))
    result = container.run(argv) if reads else container.exec(argv)
    if not result.ok:
        raise RuntimeError(result.stderr)
    return result.stdout.decode().strip()


def settle(container: Container, timeout: float = 300) -> None:
    """Let the server finish the previous step's after-work so that each timed step
    starts from the same state: autovacuum of freshly loaded tables and the ANALYZE
    the kit leaves running after a replace (either would slow the next step down),
    then a VACUUM ANALYZE of every database (so that autovacuum finds nothing to
    start in the middle of the next step) and a checkpoint for the dirty buffers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = _psql(container, "SELECT count(*) FROM pg_stat_activity "
                                "WHERE pid <> pg_backend_pid() AND (backend_type = 'autovacuum worker'"
                                " OR (backend_type = 'client backend' AND state = 'active'))",
                     "postgres")
        if busy == "0":
            break
        time.sleep(0.5)
    for database in _psql(container, "SELECT datname FROM pg_database WHERE datallowconn",
                          "postgres").split():
        _psql(container, "VACUUM (ANALYZE, PARALLEL 0)", database)  # 64 MB /dev/shm: no parallel
    _psql(container, "CHECKPOINT", "postgres")


def _labels(tag: str) -> dict[str, str]:
    # a tagged run (someone's experiment on a shared machine) is also marked as a test's
    return {"pgrunbook.lab.bench": "1", **({"pgrunbook.test": "1"} if tag else {})}


def _name(kind: str, tag: str) -> str:
    return "-".join(filter(None, ["pgrunbook-bench", kind, tag, uuid.uuid4().hex[:8]]))


def start_container(image: str, tag: str = "") -> Container:
    client = engine()
    model = client.containers.run(
        image, name=_name("", tag), detach=True, network_mode="none",
        environment={"POSTGRES_USER": USER, "POSTGRES_DB": "app", "POSTGRES_HOST_AUTH_METHOD": "trust"},
        labels=_labels(tag),
    )
    container = Container(client, model)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if b"init process complete" in model.logs(tail=50) and container.exec(
                ["pg_isready", "-q", "-U", USER]).ok:
            return container
        time.sleep(0.3)
    model.remove(force=True)
    raise RuntimeError("benchmark PostgreSQL did not start")


# An app that stops at once on SIGTERM (as a well-behaved app server does): the
# shell's trap runs as soon as the signal arrives, even while it waits.
APP_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]


def start_app(image: str, tag: str = "") -> Any:
    return engine().containers.run(
        image, APP_COMMAND, name=_name("app", tag),
        detach=True, network_mode="none", labels=_labels(tag))


def app_events(app: Any, since: float, until: float) -> dict[str, float]:
    """The engine's own times (wall clock) of the first ``kill`` (the stop's SIGTERM)
    of ``app`` between two wall-clock times, of the ``stop`` after it (the container
    is down) and of the next ``start``."""
    events = engine().events(since=datetime.fromtimestamp(since, timezone.utc),
                             until=datetime.fromtimestamp(until + 1, timezone.utc),
                             filters={"container": app.id}, decode=True)
    found: dict[str, float] = {}
    for event in events:
        action = event.get("Action") or event.get("status")
        stamp = int(event["timeNano"]) / 1e9
        if action == "kill" and "kill" not in found:
            found["kill"] = stamp
        elif action == "stop" and "kill" in found and "stop" not in found:
            found["stop"] = stamp
        elif action == "start" and "kill" in found:
            found["start"] = stamp
            return found
    raise RuntimeError("the app container was not stopped and started by the replace")


def app_downtime(app: Any, since: float, until: float) -> float:
    """Seconds from the engine's first ``kill`` of ``app`` to its next ``start``."""
    found = app_events(app, since, until)
    return found["start"] - found["kill"]


def downtime_parts(events: dict[str, float], lines: list[tuple[float, str]]) -> dict[str, float]:
    """The write downtime cut at the engine's events and the kit's own lines: the
    app's stop (kill to stop), the kit until the swap script starts, the swap, and
    the app's start (end of the swap to the engine's start event)."""
    swap_start = next(stamp for stamp, line in lines if line.startswith("・切り替え"))
    swap_end = next(stamp for stamp, line in lines if line.startswith("・(bench) 入れ替え終了"))
    stop = events.get("stop", events["kill"])
    return {"docker_stop": stop - events["kill"], "until_swap": swap_start - stop,
            "swap": swap_end - swap_start, "docker_start": events["start"] - swap_end}


def fill(container: Container, size_mb: float, dataset: str = "default") -> int:
    """Grow the app database to about ``size_mb`` MiB (the last batch scaled to fit)."""
    schema_sql, batch_sql, batch_mb = DATASETS[dataset]
    _psql(container, schema_sql)
    batch = None
    first = min(1.0, size_mb / batch_mb)
    while True:
        size = int(_psql(container, "SELECT pg_database_size('app')"))
        missing = size_mb * 1024 * 1024 - size
        if missing <= 0 or (batch and missing < batch * 0.05):
            break
        scale = first if batch is None else min(1.0, missing / batch)
        _psql(container, batch_sql.format(scale=round(scale, 3)))
        if batch is None:
            batch = int((int(_psql(container, "SELECT pg_database_size('app')")) - size) / first)
    _psql(container, "VACUUM (ANALYZE, PARALLEL 0)")  # docker's 64 MB /dev/shm is too small for parallel
    return int(_psql(container, "SELECT pg_database_size('app')"))


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as handle:
            models = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu"] = models[0] if models else ""
        with open("/proc/meminfo") as handle:
            info["memory_gb"] = round(int(handle.readline().split()[1]) / 1024 / 1024, 1)
        with open("/proc/loadavg") as handle:
            info["load_average_at_start"] = handle.read().split()[:3]
    except OSError:
        pass
    return info


def formats_for(major: int, asked: list[str] | None) -> list[str]:
    """The kit's compression formats to measure: the ones asked for, else every
    format of interest this pg_dump takes (only gzip levels before 16)."""
    if asked:
        return asked
    return list(NEWER_FORMATS) if major >= 16 else [versions.DEFAULT_BEFORE_16]


@dataclass(frozen=True)
class BenchPlan:
    """What one bench run measures: the database's size (MiB) and the rounds, on which image,
    the report's folder, and its options. ``compressions``: the kit's -Z formats (None: every
    format of interest, see formats_for). ``variants``: experiments (see VARIANT_HOOK; "a+b"
    for both) of the kit's replace with its default compression, measured beside it at the
    full size, and ways of the bare pg_restore (BARE_WAYS). ``tag``: a word in the
    containers' names. ``log_sorts``: the server logs every sort (trace_sort: internal or
    external, its CPU seconds) and checkpoint; its log is saved as server.log beside the
    report. ``prestaged``: after the rounds, a restore-replace of a backup the restore test
    kept prestaged (RESTORE_PRESTAGE), once a round, against the same hand restore."""

    size_mb: float
    rounds: int
    image: str
    output: Path
    compressions: list[str] | None = None
    dataset: str = "default"
    variants: list[str] | None = None
    tag: str = ""
    log_sorts: bool = False
    prestaged: bool = False


def compile_kit() -> None:
    """The kit's bytecode, as its first run on an operator's machine leaves it: a machine
    that sets PYTHONDONTWRITEBYTECODE (this one does) would otherwise compile the kit's
    sources again in every timed run (0.04-0.1 s each, counted as the kit's). The package
    compiled is the one the timed runs import (the same environment)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(pgrunbook.__file__).parent),
                    str(ROOT / "tasks.py"), str(ROOT / "tasks_by_area")], check=True)


def run(plan: BenchPlan) -> dict[str, Any]:
    """Measure the kit beside the hand procedure as ``plan`` says; the report (also written
    to ``plan.output``)."""
    compile_kit()
    size_mb, rounds, image, output = plan.size_mb, plan.rounds, plan.image, plan.output
    compressions, dataset, variants, tag = plan.compressions, plan.dataset, plan.variants, plan.tag
    log_sorts, prestaged = plan.log_sorts, plan.prestaged
    docker_cli = shutil.which("docker")
    if not docker_cli:
        raise SystemExit("the hand procedure needs the docker CLI on PATH")
    bare_ways = [v.partition("-")[2] for v in variants or [] if v in BARE_WAYS]
    kit_variants = [v for v in variants or [] if v not in BARE_WAYS]
    if dataset not in DATASETS:
        raise SystemExit(f"unknown dataset {dataset!r} (one of {', '.join(DATASETS)})")
    container = start_container(image, tag)
    app = start_app(image, tag)
    work = Path(tempfile.mkdtemp(prefix="pgrunbook-bench-"))
    hooks = work / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(VARIANT_HOOK)
    results = Measurements()
    try:
        if log_sorts:
            _psql(container, "ALTER SYSTEM SET trace_sort = on", "postgres")
            _psql(container, "ALTER SYSTEM SET log_checkpoints = on", "postgres")
            _psql(container, "ALTER SYSTEM SET log_line_prefix = '%m [%p] %d '", "postgres")
            _psql(container, "SELECT pg_reload_conf()", "postgres")
        version = _psql(container, "SHOW server_version", "postgres").split()[0]
        major = int(version.split(".")[0])
        formats = formats_for(major, compressions)
        # the write downtime at a quarter of the size first, in the same run: it must stay flat
        default = versions.default_compression(major)
        kit_format = default if default in formats else formats[0]
        quarter = fill(container, size_mb / 4, dataset)
        _psql(container, 'CREATE DATABASE "tiny"', "postgres")
        container.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", USER, "-d", "tiny"],
                       stdin=iter([sample_sql()]))
        name = container.name
        bench_env = work / ".env.bench"
        (work / ".env.tiny").write_text(f"DB_CONTAINER={name}\nDB_NAME=tiny\n")
        env = {**os.environ, "PGRUNBOOK_HOME": str(work)}
        invoke = [sys.executable, "-m", "invoke", "-r", str(ROOT)]
        hand_dir = work / "hand"
        hand_dir.mkdir()

        def aim(compression: str, extra: str = "") -> None:
            bench_env.write_text(f"DB_CONTAINER={name}\nDB_NAME=app\nDUMP_COMPRESSION={compression}\n"
                                 f"APP_CONTAINERS={app.name}\n{extra}")

        def hand_backup(database: str, tag: str = "") -> None:
            settle(container)
            started = time.perf_counter()
            _run([docker_cli, "exec", "-i", name, "pg_dump", "-U", USER, "-d", database, "-F", "c",
                  "-f", "/tmp/hand.dump"])
            target = hand_dir / f"{database}.dump"
            target.unlink(missing_ok=True)
            _run([docker_cli, "cp", f"{name}:/tmp/hand.dump", str(target)])
            results.add(f"hand_backup_{database}{tag}", time.perf_counter() - started)
            if database == "app" and not tag:
                results.sizes["hand_archive"] = target.stat().st_size
            container.exec(["rm", "-f", "/tmp/hand.dump"])

        def kit_backup(compression: str, tag: str = "") -> Path:
            aim(compression)
            settle(container)
            done = _run(invoke + ["backup", "--env=bench"], env=env)
            results.add(f"kit_backup[{compression}]{tag}", done.seconds, done.rss_mb)
            path = Path(done.last_line)
            results.sizes[f"kit_archive[{compression}]{tag}"] = path.stat().st_size
            return path

        def kit_backup_tiny() -> None:
            settle(container)
            done = _run(invoke + ["backup", "--env=tiny"], env=env)
            results.add("kit_backup_tiny", done.seconds, done.rss_mb)

        def hand_restore(tag: str = "") -> None:
            settle(container)
            started = time.perf_counter()
            psql = [docker_cli, "exec", "-i", name, "psql", "-U", USER, "-d", "postgres", "-c"]
            _run(psql + ["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app';"])
            dropped = time.perf_counter()
            _run(psql + ["DROP DATABASE app;"])
            _run(psql + ["CREATE DATABASE app;"])
            created = time.perf_counter()
            _run([docker_cli, "cp", str(hand_dir / "app.dump"), f"{name}:/tmp/hand.dump"])
            copied = time.perf_counter()
            _run([docker_cli, "exec", "-i", name, "pg_restore", "-U", USER, "-d", "app", "/tmp/hand.dump"])
            ended = time.perf_counter()
            results.add(f"hand_restore{tag}", ended - started)
            results.add(f"hand_downtime{tag}", ended - dropped)
            results.add_steps(f"hand_restore{tag}", {
                "接続の切断・DROP・CREATE": created - started, "docker cp": copied - created,
                "pg_restore": ended - copied})
            container.exec(["rm", "-f", "/tmp/hand.dump"])

        def bare_restore(path: Path, way: str = "") -> None:
            """The kit's own archive by a bare ``pg_restore`` into an empty database, the
            step the kit's restore is held against (``way``: "" the file placed by ``docker
            cp`` beside the live database; "stdin" fed through ``docker exec -i``; "nolive"
            into the live database's place after DROP, as the hand procedure does)."""
            settle(container)
            database = "app" if way == "nolive" else f"bare_{uuid.uuid4().hex[:8]}"
            psql = [docker_cli, "exec", "-i", name, "psql", "-U", USER, "-d", "postgres", "-c"]
            if way == "nolive":
                _run(psql + ["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app';"])
                _run(psql + ["DROP DATABASE app;"])
            _run(psql + [f"CREATE DATABASE {database};"])
            restore = [docker_cli, "exec", "-i", name, "pg_restore", "-U", USER, "-d", database]
            if way == "stdin":
                cpu = container_cpu()
                started = time.perf_counter()
                with open(path, "rb") as archive:
                    done = subprocess.run(restore, stdin=archive, capture_output=True)
                if done.returncode != 0:
                    raise RuntimeError(f"bare pg_restore from stdin failed: {done.stderr.decode()[-2000:]}")
            else:
                _run([docker_cli, "cp", str(path), f"{name}:/tmp/bare.dump"])
                cpu = container_cpu()
                started = time.perf_counter()
                _run(restore + ["/tmp/bare.dump"])
            seconds = time.perf_counter() - started
            suffix = f"[{way}]" if way else ""
            results.add(f"bare_restore{suffix}", seconds)
            results.add(f"bare_restore_cpu{suffix}", container_cpu() - cpu)
            results.counts.setdefault(f"autovacuum_runs[bare{'-' + way if way else ''}]", []).append(
                autovacuum_runs(database))
            container.exec(["rm", "-f", "/tmp/bare.dump"])
            if way != "nolive":
                _psql(container, f"DROP DATABASE {database}", "postgres")

        def container_cpu() -> float:
            return float(container.exec(["sh", "-c", CPU_SECONDS]).stdout.split()[0]) / 1e9

        def autovacuum_runs(database: str) -> int:
            """autovacuum and autoanalyze runs on the database's tables so far: > 0 right after
            a restore means the server's own after-work overlapped it."""
            return int(_psql(container, "SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) "
                                        "FROM pg_stat_user_tables", database))

        def kit_restore(compression: str, path: Path, tag: str = "", variant: str = "") -> None:
            aim(compression)
            settle(container)
            since = time.time()
            traced = {**env, "PGRUNBOOK_BENCH_TRACE": "1",
                      "PGRUNBOOK_BENCH_VARIANTS": variant.replace("+", ","),
                      "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))}
            done, lines = _run_traced(invoke + ["restore-replace", "--env=bench", f"--file={path}",
                                                "--confirm=bench"], env=traced)
            key = f"{compression}+{variant}" if variant else compression
            events = app_events(app, since, time.time())
            results.add(f"kit_restore[{key}]{tag}", done.seconds, done.rss_mb)
            results.add(f"kit_downtime[{key}]{tag}", events["start"] - events["kill"])
            results.add_steps(f"kit_restore[{key}]{tag}", step_times(lines))
            results.timelines[f"kit_restore[{key}]{tag}"] = [
                [round(stamp - lines[0][0], 3), line] for stamp, line in lines]
            results.add_steps(f"kit_downtime[{key}]{tag}", downtime_parts(events, lines))
            restored = kit_pg_restore(lines)
            if restored:
                results.add(f"kit_pg_restore[{key}]{tag}", restored[0])
                results.add(f"kit_pg_restore_cpu[{key}]{tag}", restored[1])
            if not tag:
                results.counts.setdefault(f"autovacuum_runs[kit{'+' + variant if variant else ''}]",
                                          []).append(autovacuum_runs("app"))
                results.counts.setdefault(f"statistics_at_swap[kit{'+' + variant if variant else ''}]",
                                          []).append(planner_statistics("app"))
            previous = done.last_line
            _run(invoke + ["restore-drop", "--env=bench", f"--db={previous}", "--confirm=bench"], env=env)

        def planner_statistics(database: str) -> int:
            """Columns with planner statistics (pg_stats) right after a replace: from the
            archive (pg_dump 18+ --statistics), else none until the kit's ANALYZE ends."""
            return int(_psql(container, "SELECT count(*) FROM pg_stats "
                                        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                             database))

        def hand_analyze() -> None:
            """What the hand restore still needs before the app plans normally: an ANALYZE
            (timed apart, not part of the hand restore's time)."""
            started = time.perf_counter()
            _psql(container, "ANALYZE")
            results.add("hand_analyze", time.perf_counter() - started)

        for round_number in range(rounds):
            kit_first = round_number % 2 == 1
            hand_backup("app", QUARTER)
            path = kit_backup(kit_format, QUARTER)
            for step in ("kit", "hand") if kit_first else ("hand", "kit"):
                if step == "hand":
                    hand_restore(QUARTER)
                else:
                    kit_restore(kit_format, path, QUARTER)
            path.unlink()
        actual = fill(container, size_mb, dataset)
        for round_number in range(rounds):
            kit_first = round_number % 2 == 1
            order = formats if round_number % 2 == 0 else formats[::-1]
            paths: dict[str, Path] = {}
            for step in ("kit", "hand") if kit_first else ("hand", "kit"):
                if step == "hand":
                    hand_backup("app")
                    hand_backup("tiny")
                else:
                    for compression in order:
                        paths[compression] = kit_backup(compression)
                    kit_backup_tiny()
            # the kit's restore and the bare pg_restore of its file one right after the other
            # (the load of a shared machine changes over minutes), in turn first
            steps = ["hand", "kit", "bare", *(f"bare-{way}" for way in bare_ways), "kit-others"]
            for step in steps if round_number % 2 == 0 else steps[::-1]:
                if step == "hand":
                    hand_restore()
                    hand_analyze()
                elif step.startswith("bare"):
                    bare_restore(paths[kit_format], step.partition("-")[2])
                elif step == "kit":
                    kit_restore(kit_format, paths[kit_format])
                else:
                    for compression in order:
                        if compression != kit_format:
                            kit_restore(compression, paths[compression])
                    for variant in kit_variants if round_number % 2 == 0 else kit_variants[::-1]:
                        kit_restore(kit_format, paths[kit_format], variant=variant)
            for path in paths.values():
                path.unlink()
        for round_number in range(rounds if prestaged else 0):
            path = kit_backup(kit_format, PRESTAGED)
            aim(kit_format, "RESTORE_PRESTAGE=true\n")
            settle(container)
            tested = _run(invoke + ["verify", "--env=bench", "--restore-test"], env=env)
            results.add("kit_restore_test_prestaging", tested.seconds, tested.rss_mb)
            # beside a hand restore of the same round, in turn first
            for step in ("kit", "hand") if round_number % 2 == 0 else ("hand", "kit"):
                if step == "kit":
                    kit_restore(kit_format, path, PRESTAGED)
                else:
                    hand_restore(PRESTAGED)
            path.unlink()
        report = summarize(results, plan, version, formats, actual, quarter)
        report["dataset"] = dataset
        if dataset == "large-tables":  # issue 24: no slower than by hand with few large tables
            report["targets"]["restore_ratio"] = TARGETS["restore_ratio_large"]
            report["met"]["restore_replace"] = (report["ratios"]["restore_replace"]
                                                <= TARGETS["restore_ratio_large"])
        if prestaged:
            seconds = results.median(f"kit_restore[{kit_format}]{PRESTAGED}")
            pairs = [round(kit / hand, 3) for kit, hand in zip(
                results.times[f"kit_restore[{kit_format}]{PRESTAGED}"],
                results.times[f"hand_restore{PRESTAGED}"], strict=False)]
            report["prestaged"] = {
                "restore_replace_seconds": round(seconds, 3),
                "ratio_to_hand": round(statistics.median(pairs), 3),
                "ratios_to_hand": pairs,
                "hand_restore_seconds": round(results.median(f"hand_restore{PRESTAGED}"), 3),
                "downtime_seconds": round(results.median(f"kit_downtime[{kit_format}]{PRESTAGED}"), 3),
                "restore_test_seconds": round(results.median("kit_restore_test_prestaging"), 3),
                "target_ratio": TARGETS["prestaged_ratio"],
            }
        report["table_rows"] = dict(line.split("|") for line in _psql(
            container, f"SELECT c.relname, {EXACT_ROWS} {USER_TABLES_FROM} ORDER BY 1").splitlines())
        report["steps_seconds"] = results.step_medians()
        report["last_timelines"] = results.timelines
        report["variants"] = {
            variant: {
                "restore_replace_seconds": round(results.median(f"kit_restore[{kit_format}+{variant}]"), 3),
                "downtime_seconds": round(results.median(f"kit_downtime[{kit_format}+{variant}]"), 3),
            } for variant in kit_variants}
        report["restore_step"] = restore_step(results, kit_format, kit_variants, bare_ways)
        report["counts"] = results.counts
        if "hand_analyze" in results.times:
            report["hand_analyze_seconds"] = round(results.median("hand_analyze"), 3)
    finally:
        if log_sorts:
            output.mkdir(parents=True, exist_ok=True)
            (output / "server.log").write_bytes(container.model.logs())
        container.model.remove(force=True, v=True)
        app.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    (output / "bench.md").write_text(markdown(report), encoding="utf-8")
    return report


RESTORE_STEP = "staging への復元（pg_restore）"
UPLOAD_STEP = "アーカイブの送信（sha256 を同時に計算）"
# the bare pg_restore of the kit's own archive, other ways (see bare_restore)
BARE_WAYS = {"bare-stdin": "`docker exec -i … pg_restore < ファイル`（exec のソケット経由。Python なし）",
             "bare-nolive": "本番 DB を DROP してから（手作業と同じ。本番 DB が横にない）"}


def restore_step(results: Measurements, kit: str, kit_variants: list[str],
                 bare_ways: list[str]) -> dict[str, Any]:
    """The kit's pg_restore step against a bare pg_restore of the same file into an
    empty database, each way as the median of its ratios to the bare one of the same
    round (the machine's load changes between rounds more than within one)."""
    bare = results.times.get("bare_restore", [])
    names = {"kit": f"[{kit}]", **{f"kit+{v}": f"[{kit}+{v}]" for v in kit_variants}}

    def ways() -> dict[str, tuple[list[float], list[float]]]:
        found = {way: (results.times.get(f"kit_pg_restore{key}", []),
                       results.times.get(f"kit_pg_restore_cpu{key}", [])) for way, key in names.items()}
        found |= {f"bare-{w}": (results.times.get(f"bare_restore[{w}]", []),
                                results.times.get(f"bare_restore_cpu[{w}]", [])) for w in bare_ways}
        return found

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 3) if values else None

    report: dict[str, Any] = {"bare_seconds": median(bare), "bare_times": bare,
                              "bare_cpu_seconds": median(results.times.get("bare_restore_cpu", [])),
                              "target_ratio": TARGETS["restore_step_ratio"], "ways": {}}
    for way, (times, cpu) in ways().items():
        ratios = [round(t / b, 3) for t, b in zip(times, bare, strict=False) if b]
        report["ways"][way] = {"seconds": median(times), "times": times, "ratios": ratios,
                               "ratio": median(ratios), "cpu_seconds": median(cpu)}
    uploads = results.steps.get(f"kit_restore[{kit}]", {}).get(UPLOAD_STEP, [])
    report["upload_seconds"] = median(uploads)
    return report


def summarize(results: Measurements, plan: BenchPlan, version: str, formats: list[str],
              size: int, quarter: int) -> dict[str, Any]:
    """The report of ``plan``'s run: ``size`` and ``quarter`` the database's bytes at the
    full size and at a quarter of it."""
    rounds, image = plan.rounds, plan.image
    major = int(version.split(".")[0])
    default = versions.default_compression(major)
    kit = default if default in formats else formats[0]  # the kit's default, when measured
    per_format = {
        spec: {
            "backup_seconds": round(results.median(f"kit_backup[{spec}]"), 3),
            "restore_replace_seconds": round(results.median(f"kit_restore[{spec}]"), 3),
            "sum_seconds": round(results.median(f"kit_backup[{spec}]")
                                 + results.median(f"kit_restore[{spec}]"), 3),
            "downtime_seconds": round(results.median(f"kit_downtime[{spec}]"), 3),
            "archive_bytes": results.sizes[f"kit_archive[{spec}]"],
        }
        for spec in formats
    }
    fastest = min(formats, key=lambda spec: per_format[spec]["sum_seconds"])
    backup_ratio = results.median(f"kit_backup[{kit}]") / results.median("hand_backup_app")
    restore_ratio = results.median(f"kit_restore[{kit}]") / results.median("hand_restore")
    downtime = results.median(f"kit_downtime[{kit}]")
    hand_downtime = results.median("hand_downtime")
    overhead = results.median("kit_backup_tiny") - results.median("hand_backup_tiny")
    peak = max(max(values) for values in results.rss_mb.values())
    backup_target = TARGETS["backup_ratio_16" if major >= 16 else "backup_ratio"]
    return {
        "kind": "pgrunbook-bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "image": image,
        "server_version": version,
        "database_bytes": size,
        "rounds": rounds,
        "kit_compression": kit,
        "kit_default_compression": default,
        "fastest_compression": fastest,
        "formats": per_format,
        "times_seconds": results.times,
        "medians_seconds": {name: round(results.median(name), 3) for name in results.times},
        "downtime_at_a_quarter": {
            "database_bytes": quarter,
            "kit_seconds": round(results.median(f"kit_downtime[{kit}]{QUARTER}"), 3),
            "hand_seconds": round(results.median(f"hand_downtime{QUARTER}"), 3),
        },
        "kit_peak_rss_mb": results.rss_mb,
        "archive_bytes": results.sizes,
        "ratios": {
            "backup": round(backup_ratio, 3),
            "restore_replace": round(restore_ratio, 3),
            "downtime_seconds": round(downtime, 3),
            "hand_downtime_seconds": round(hand_downtime, 3),
            "downtime": round(downtime / hand_downtime, 3),
            "tiny_overhead_seconds": round(overhead, 3),
            "peak_rss_mb": round(peak, 1),
        },
        "targets": {**TARGETS, "backup_ratio": backup_target},
        "met": {
            "backup": backup_ratio <= backup_target,
            "restore_replace": restore_ratio <= TARGETS["restore_ratio"],
            "downtime": downtime <= TARGETS["downtime_seconds"]
            and downtime / hand_downtime <= TARGETS["downtime_ratio"],
            "tiny_overhead": overhead <= TARGETS["tiny_overhead_seconds"],
            "peak_rss": peak <= TARGETS["peak_rss_mb"],
        },
    }


def _mib(size: float) -> str:
    return f"{size / 1024 / 1024:.0f} MiB"


def markdown(report: dict[str, Any]) -> str:
    """One run's report, with its per-step breakdown when it has one."""
    return side_by_side([report]) + "\n".join(["", *details(report), ""])


def details(report: dict[str, Any]) -> list[str]:
    """What one run adds below the side-by-side table."""
    return [*restore_step_lines(report), *prestaged_lines(report), *breakdown(report)]


def _cpu(seconds: float | None) -> str:
    return f"{seconds:.1f} 秒" if seconds is not None else "—"


def _way_text(way: str) -> str:
    if way == "kit":
        return "キットの `pg_restore`（既定。コンテナへ送ったファイルから）"
    if way.startswith("kit+"):
        return "キット: " + _variant_text(way[4:])
    return "素の `pg_restore`: " + BARE_WAYS.get(way, way)


def restore_step_lines(report: dict[str, Any]) -> list[str]:
    """The kit's pg_restore step beside a bare pg_restore of the same file, round by round."""
    found = report.get("restore_step") or {}
    if not found.get("bare_seconds"):
        return []
    kit = report["kit_compression"]
    lines = ["", f"pg_restore の段階（キットと同じファイル `-Z {kit}` を空の DB へ。比は同じ回の素の "
                 f"`pg_restore` との比の中央値、かっこ内は各回。目標 ≤ {found['target_ratio']}）:", "",
             "| 復元のしかた | 時間（中央値） | 素の `pg_restore` との比 | コンテナの CPU 時間 |",
             "|---|---|---|---|",
             f"| 素の `pg_restore`（`docker cp` したファイルから、本番 DB の横の空の DB へ） | "
             f"{found['bare_seconds']:.2f} 秒 | 1 | {_cpu(found.get('bare_cpu_seconds'))} |"]
    for way, measured in found["ways"].items():
        if measured["seconds"] is None:
            continue
        each = "、".join(f"{ratio:.2f}" for ratio in measured["ratios"])
        lines.append(f"| {_way_text(way)} | {measured['seconds']:.2f} 秒 | "
                     f"**{measured['ratio']:.2f}**（{each}） | {_cpu(measured.get('cpu_seconds'))} |")
    notes = []
    if found.get("upload_seconds") is not None:
        notes.append("キットのアーカイブの送信（sha256 を同時に計算。手作業の `docker cp` にあたり、"
                     f"上の時間には含まない）: {found['upload_seconds']:.2f} 秒")
    counts = report.get("counts") or {}
    runs = {key: values for key, values in counts.items() if key.startswith("autovacuum_runs")}
    if runs:
        notes.append("復元直後までに自動 VACUUM / ANALYZE が動いた回数（各回）: " + "、".join(
            f"{key.split('[', 1)[1].rstrip(']')} {'/'.join(map(str, values))}"
            for key, values in runs.items()))
    stats = counts.get("statistics_at_swap[kit]")
    if stats and int(report["server_version"].split(".")[0]) >= 18:  # before 18: the kit's ANALYZE
        notes.append(f"置き換え直後に統計のある列（`pg_stats`）: {'/'.join(map(str, stats))}"
                     + (f"。手作業の復元の後の `ANALYZE`: {report['hand_analyze_seconds']:.2f} 秒"
                        "（手作業の時間には含まない）" if report.get("hand_analyze_seconds") else ""))
    return lines + ([""] + [f"- {note}" for note in notes] if notes else [])


def prestaged_lines(report: dict[str, Any]) -> list[str]:
    """The replace of a prestaged newest backup (RESTORE_PRESTAGE) against the hand restore."""
    found = report.get("prestaged")
    if not found:
        return []
    met = "達成" if found["ratio_to_hand"] <= found["target_ratio"] else "未達"
    each = "、".join(f"{ratio:.3f}" for ratio in found.get("ratios_to_hand", []))
    hand = found.get("hand_restore_seconds")
    lines = ["", "事前展開した最新バックアップへの置き換え（`RESTORE_PRESTAGE=true`、中央値。比は同じ回の"
                 "手作業の復元との比の中央値）:", "",
             "| 置き換え（確認・切り替えのみ） | 手作業の復元 | 比（各回） | 目標 | 書き込み停止 "
             "| 事前展開した復元テスト |",
             "|---|---|---|---|---|---|",
             f"| {found['restore_replace_seconds']:.2f} 秒 | {f'{hand:.1f} 秒' if hand else '—'} | "
             f"**{found['ratio_to_hand']:.3f}**{f'（{each}）' if each else ''} | "
             f"≤ {found['target_ratio']}（{met}） | {found['downtime_seconds']:.2f} 秒 | "
             f"{found['restore_test_seconds']:.1f} 秒（夜間。待つ人はいない） |"]
    steps = (report.get("steps_seconds") or {}).get(f"kit_restore[{report['kit_compression']}]{PRESTAGED}")
    if steps:
        lines += ["", "その段階ごとの時間（中央値）:", "", "| 段階 | 時間 |", "|---|---|"]
        lines += [f"| {step} | {seconds:.2f} 秒 |" for step, seconds in steps.items() if seconds >= 0.005]
    return lines


VARIANT_TEXT = {
    "mwm": "復元セッションに `maintenance_work_mem=256MB`",
    "mwm-auto": "復元セッションに `maintenance_work_mem`（サーバーのメモリの 1/16、64MB〜2GB）",
    "section": "`--section` で分割（post-data のインデックス作成を行数の照合と同時に。"
               "pg_restore の段階は pre-data と data だけ）",
    "stream": "アーカイブを標準入力から流す（以前のキット。exec のソケットと sha256 の計算を経由）",
    "notxsize": "`--transaction-size` なし（17 以降の既定をやめる）",
    "nosync": "復元セッションに `synchronous_commit=off`",
    "checkpoint": "アプリを止める前に `CHECKPOINT`",
    "nocheckpoint": "アプリを止める前の `CHECKPOINT` なし（以前のキット）",
    "jobs2": "`pg_restore -j 2`（アーカイブをコンテナへ送ってから）",
}


def _variant_text(variant: str) -> str:
    return " + ".join(VARIANT_TEXT.get(part, part) for part in variant.split("+"))


def breakdown(report: dict[str, Any]) -> list[str]:
    """The replace step by step (kit and hand, medians of the same run), the write
    downtime cut into its parts, and the variants measured beside the kit."""
    steps = report.get("steps_seconds")
    if not steps:
        return []
    kit = report["kit_compression"]
    medians = report["medians_seconds"]
    lines = [f"置き換えリストアの段階ごとの時間（{_mib(report['database_bytes'])}、データセット "
             f"`{report.get('dataset', 'default')}`、中央値。キットは `-Z {kit}`）:", "",
             "| 段階 | 時間 |", "|---|---|"]
    lines += [f"| 手作業: {step} | {seconds:.2f} 秒 |" for step, seconds in steps["hand_restore"].items()]
    lines.append(f"| **手作業の合計** | **{medians['hand_restore']:.2f} 秒** |")
    lines += [f"| キット: {step} | {seconds:.2f} 秒 |"
              for step, seconds in steps[f"kit_restore[{kit}]"].items() if seconds >= 0.005]
    lines.append(f"| **キットの合計** | **{medians[f'kit_restore[{kit}]']:.2f} 秒**"
                 f"（手作業の {medians[f'kit_restore[{kit}]'] / medians['hand_restore']:.2f} 倍） |")
    times = report["times_seconds"]
    pairs = list(zip(times["hand_restore"], times[f"kit_restore[{kit}]"], strict=False))
    lines += ["", "各回の組（同じ回の中で測った 手作業 → キット、比率）: " + "、".join(
        f"{hand:.1f} → {kit_seconds:.1f} 秒（{kit_seconds / hand:.2f}）" for hand, kit_seconds in pairs)
        + "。各段階の中央値は別々の回から取るため、足しても合計の中央値とは一致しません。"]
    parts = {"docker_stop": "アプリの停止（`kill` から `stop` イベント）",
             "until_swap": "停止の確認から入れ替えの開始まで", "swap": "接続の切断と名前の入れ替え",
             "docker_start": "入れ替えの終わりからアプリの `start` イベント"}
    runs = [(f"`-Z {kit}`", f"kit_downtime[{kit}]")] + [
        (_variant_text(v), f"kit_downtime[{kit}+{v}]") for v in report.get("variants", {})]
    runs = [(label, name) for label, name in runs if name in steps]
    lines += ["", "書き込みが止まる時間の内訳（中央値）:", "",
              "| 内訳 | " + " | ".join(label for label, _name in runs) + " |",
              "|---|" + "---|" * len(runs)]
    for part, label in parts.items():
        lines.append(f"| {label} | " + " | ".join(f"{steps[name][part]:.3f} 秒" for _l, name in runs) + " |")
    lines.append("| **合計** | " + " | ".join(f"**{medians[name]:.3f} 秒**" for _l, name in runs) + " |")
    if report.get("variants"):
        lines += ["", "試した変更（同じ実行の中で、キットの既定と交互に測った中央値）:", "",
                  "| 変更 | 置き換えリストア | 書き込み停止 |", "|---|---|---|",
                  f"| なし（キットの既定 `-Z {kit}`） | {medians[f'kit_restore[{kit}]']:.2f} 秒 | "
                  f"{medians[f'kit_downtime[{kit}]']:.3f} 秒 |"]
        lines += [f"| {_variant_text(v)} | {found['restore_replace_seconds']:.2f} 秒 | "
                  f"{found['downtime_seconds']:.3f} 秒 |" for v, found in report["variants"].items()]
    rows = report.get("table_rows")
    if rows:
        lines += ["", "テーブルの行数: " + "、".join(f"{name} {int(count):,}"
                                                  for name, count in rows.items())]
    return lines


def downtime_table(reports: list[dict[str, Any]]) -> list[str]:
    """The write downtime of every run by version and size: flat for the kit, growing by hand."""
    ordered = sorted(reports, key=lambda r: (int(r["server_version"].split(".")[0]), r["database_bytes"]))
    lines = ["", "書き込みが止まる時間（DB の大きさ別。1/4 の大きさは同じ実行の最初に測ったもの。キットは"
             "アプリのコンテナの停止から再開まで、手作業は DROP から pg_restore の終わりまで。中央値）:", "",
             "| 版 | DB | キット | 手作業 | 比率 |", "|---|---|---|---|---|"]
    for r in ordered:
        small = r.get("downtime_at_a_quarter")
        if small:  # the same run, at a quarter of the size
            lines.append(f"| PostgreSQL {r['server_version']} | {_mib(small['database_bytes'])} | "
                         f"{small['kit_seconds']:.2f} 秒（`-Z {r['kit_compression']}`） | "
                         f"{small['hand_seconds']:.1f} 秒 | "
                         f"{small['kit_seconds'] / small['hand_seconds']:.3f} |")
        lines.append(f"| PostgreSQL {r['server_version']} | {_mib(r['database_bytes'])} | "
                     f"{r['ratios']['downtime_seconds']:.2f} 秒（`-Z {r['kit_compression']}`） | "
                     f"{r['ratios']['hand_downtime_seconds']:.1f} 秒 | {r['ratios']['downtime']:.3f} |")
    return lines


def side_by_side(reports: list[dict[str, Any]], also: list[dict[str, Any]] | None = None) -> str:
    """Several runs (one per PostgreSQL version), one column each; ``also``: more runs
    (other sizes) that only join the downtime table."""
    ok = {True: "達成", False: "未達"}
    heads = [f"PostgreSQL {r['server_version']}（{_mib(r['database_bytes'])}）" for r in reports]

    def row(label: str, cells: list[str]) -> str:
        return "| " + " | ".join([label, *cells]) + " |"

    def m(report: dict[str, Any], name: str) -> float:
        return report["medians_seconds"][name]

    lines = [
        "**書き込みが止まる時間（置き換えリストア）: "
        + "、".join(f"PostgreSQL {r['server_version'].split('.')[0]}（{_mib(r['database_bytes'])}）"
                   f" キット {r['ratios']['downtime_seconds']:.2f} 秒 / 手作業 "
                   f"{r['ratios']['hand_downtime_seconds']:.1f} 秒"
                   + (f"（1/4 の大きさで {r['downtime_at_a_quarter']['kit_seconds']:.2f} 秒 / "
                      f"{r['downtime_at_a_quarter']['hand_seconds']:.1f} 秒）"
                      if r.get("downtime_at_a_quarter") else "") for r in reports)
        + "**（キット: アプリのコンテナの停止から再開まで。手作業: DROP から pg_restore の終わりまで）",
        "",
        "| 項目 | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(reports),
        row("キットの圧縮（既定）", [f"`-Z {r['kit_compression']}`" for r in reports]),
        row("書き込み停止 キット / 手作業",
            [f"{r['ratios']['downtime_seconds']:.2f} / {r['ratios']['hand_downtime_seconds']:.1f} 秒"
             f"（{r['ratios']['downtime']:.3f}、目標 ≤ {r['targets']['downtime_seconds']} 秒・"
             f"≤ {r['targets']['downtime_ratio']}: {ok[r['met']['downtime']]}）" for r in reports]),
        row("バックアップ 手作業 → キット",
            [f"{m(r, 'hand_backup_app'):.2f} → {m(r, 'kit_backup[' + r['kit_compression'] + ']'):.2f} 秒"
             f"（{r['ratios']['backup']:.2f}、目標 ≤ {r['targets']['backup_ratio']}: "
             f"{ok[r['met']['backup']]}）" for r in reports]),
        row("置き換えリストア 手作業 → キット",
            [f"{m(r, 'hand_restore'):.2f} → {m(r, 'kit_restore[' + r['kit_compression'] + ']'):.2f} 秒"
             f"（{r['ratios']['restore_replace']:.2f}、目標 ≤ {r['targets']['restore_ratio']}: "
             f"{ok[r['met']['restore_replace']]}）" for r in reports]),
        row("小さな DB のバックアップ 手作業 → キット",
            [f"{m(r, 'hand_backup_tiny'):.2f} → {m(r, 'kit_backup_tiny'):.2f} 秒"
             f"（差 {r['ratios']['tiny_overhead_seconds']:+.2f}、目標 ≤ "
             f"{r['targets']['tiny_overhead_seconds']}: {ok[r['met']['tiny_overhead']]}）" for r in reports]),
        row("キットの最大メモリ（RSS）",
            [f"{r['ratios']['peak_rss_mb']:.0f} MB（目標 ≤ {r['targets']['peak_rss_mb']}: "
             f"{ok[r['met']['peak_rss']]}）" for r in reports]),
        row("アーカイブ 手作業（pg_dump 既定）", [_mib(r["archive_bytes"]["hand_archive"]) for r in reports]),
        "",
        "圧縮形式ごとのキットの時間（バックアップ + 置き換えリストア、中央値。★ = 合計が最短）:",
        "",
    ]
    formats = list(dict.fromkeys(spec for r in reports for spec in r["formats"]))
    lines += ["| 圧縮 (`-Z`) | " + " | ".join(heads) + " |", "|---|" + "---|" * len(reports)]
    for spec in formats:
        cells = []
        for r in reports:
            found = r["formats"].get(spec)
            if not found:
                cells.append("—（16 以降のみ）" if int(r["server_version"].split(".")[0]) < 16 else "—")
                continue
            star = " ★" if spec == r["fastest_compression"] and len(r["formats"]) > 1 else ""
            cells.append(f"{found['backup_seconds']:.2f} + {found['restore_replace_seconds']:.2f} = "
                         f"{found['sum_seconds']:.2f} 秒{star}、{_mib(found['archive_bytes'])}、"
                         f"停止 {found['downtime_seconds']:.2f} 秒")
        lines.append(row(f"`{spec}`", cells))
    lines += downtime_table(reports + list(also or []))
    hosts = {json.dumps(r["machine"].get("cpu", "")) for r in reports}
    first = reports[0]
    lines += [
        "",
        f"測定: {', '.join(r['when'] for r in reports)} / 各 {first['rounds']} 回の中央値 / イメージ: "
        + ", ".join(f"`{r['image']}`" for r in reports),
        "",
        f"マシン: {first['machine'].get('cpu', '')}、{first['machine'].get('cpus')} コア、"
        f"{first['machine'].get('memory_gb', '?')} GB、Python {first['machine'].get('python')}"
        + ("（別のマシンの結果を含む）" if len(hosts) > 1 else "")
        + "、開始時の load average: "
        + " / ".join(" ".join(r["machine"].get("load_average_at_start", [])) for r in reports),
        "",
    ]
    return "\n".join(lines)


PAGE_START = "<!-- bench:start -->"
PAGE_END = "<!-- bench:end -->"


def update_page(page: Path, report_markdown: str, block: str = "") -> None:
    """Replace the block between the bench markers of a runbook page with the report
    (``block``: a named block, ``<!-- bench:NAME:start -->``)."""
    start_mark = PAGE_START.replace("bench:", f"bench:{block}:") if block else PAGE_START
    end_mark = PAGE_END.replace("bench:", f"bench:{block}:") if block else PAGE_END
    text = page.read_text(encoding="utf-8")
    head, start, rest = text.partition(start_mark)
    _old, end, tail = rest.partition(end_mark)
    if not start or not end:
        raise SystemExit(f"{page} has no {start_mark} ... {end_mark} block")
    page.write_text(f"{head}{start_mark}\n{report_markdown}\n{end_mark}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=900)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", default=os.environ.get("PGRUNBOOK_TEST_IMAGE", "postgres:15"))
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--compressions", default="",
                        help="the kit's -Z formats to measure, comma-separated (default: gzip:1, lz4, "
                             "zstd:1, zstd:3 on PostgreSQL 16+, 1 before)")
    parser.add_argument("--dataset", default="default", choices=sorted(DATASETS),
                        help="default: many tables of ledger, audit and documents; large-tables: "
                             "two large tables (issue 14's 2.5 M + 2 M rows at 985 MB)")
    parser.add_argument("--variants", default="",
                        help="experiments measured beside the kit's replace, comma-separated: "
                             "mwm, mwm-auto, nosync, nocheckpoint, jobs2, stream, notxsize, section, or "
                             "several joined with + (e.g. mwm+nosync); and ways of the bare pg_restore "
                             "of the kit's file: bare-stdin, bare-nolive")
    parser.add_argument("--prestaged", action="store_true",
                        help="also a replace of a prestaged backup (RESTORE_PRESTAGE)")
    parser.add_argument("--tag", default="", help="a word in the containers' names (a shared machine)")
    parser.add_argument("--log-sorts", action="store_true",
                        help="the server logs its sorts (trace_sort) and checkpoints; saved as server.log")
    parser.add_argument("--page", type=Path, help="a runbook page whose report block to replace")
    parser.add_argument("--block", default="", help="the named block of --page (<!-- bench:NAME:start -->)")
    parser.add_argument("--beside", type=Path, action="append", default=[],
                        help="an earlier bench.json to show beside this run (another version or size)")
    parser.add_argument("--downtime-beside", type=Path, action="append", default=[],
                        help="an earlier bench.json (another size) for the downtime table only")
    parser.add_argument("--combine", action="store_true",
                        help="run nothing: render the --beside reports side by side")
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.beside]
    if not args.combine:
        asked = [spec.strip() for spec in args.compressions.split(",") if spec.strip()]
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in variants if not set(v.split("+")) <= set(VARIANT_TEXT) | set(BARE_WAYS)]
        if unknown:
            raise SystemExit(f"unknown variants: {', '.join(unknown)} "
                             f"(known: {', '.join([*VARIANT_TEXT, *BARE_WAYS])})")
        reports.append(run(BenchPlan(args.size_mb, args.rounds, args.image, args.output, asked or None,
                                     args.dataset, variants, args.tag, args.log_sorts, args.prestaged)))
    if not reports:
        raise SystemExit("nothing to report: give --beside with --combine")
    text = side_by_side(reports, [json.loads(path.read_text()) for path in args.downtime_beside])
    if len(reports) == 1:
        text += "\n".join(["", *details(reports[0]), ""])
    if args.page:
        update_page(args.page, text, args.block)
    sys.stdout.write(text)
    if not args.combine:
        sys.stdout.write(f"\n{args.output / 'bench.json'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
