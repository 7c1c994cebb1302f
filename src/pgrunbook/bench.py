"""Benchmark: the runbook's hand procedure against the kit's tasks, side by side.

Creates a disposable PostgreSQL container (no network) with a realistic
dataset of a given size (ledger rows, JSON audit payloads, random text),
then alternates, for N rounds, the runbook's hand commands (docker CLI:
``pg_dump -F c -f`` + ``docker cp``; DROP, CREATE, ``docker cp``,
``pg_restore``) and the kit's tasks (``invoke backup``, ``invoke
restore-replace``). Reports medians, ratios, the kit's peak RSS and the
archive sizes as JSON and Markdown. Nothing here asserts a time: the numbers
are for people to read.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgrunbook.container import Container, engine
from pgrunbook.sandbox import sample_sql

ROOT = Path(__file__).resolve().parents[2]
USER = "app"
TARGETS = {"backup_ratio": 0.6, "restore_ratio": 0.75, "tiny_overhead_seconds": 0.5, "peak_rss_mb": 80}

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
FROM generate_series(1, 120000);
INSERT INTO audit.events (at, payload)
SELECT now() - random() * interval '900 days',
       jsonb_build_object('user', 'member' || (random() * 500)::int, 'action',
         (ARRAY['login','vote','approve','edit','export'])[1 + (random() * 4)::int],
         'ip', '192.0.2.' || (random() * 250)::int, 'detail', md5(random()::text),
         'diff', jsonb_build_object('before', md5(random()::text), 'after', md5(random()::text)))
FROM generate_series(1, 80000);
INSERT INTO public.documents (title, body)
SELECT '議事録 第' || g || '回',
       repeat(md5(random()::text) || ' ', 6) || (ARRAY['賛成多数で可決','継続審議','否決'])[1 + g % 3]
FROM generate_series(1, 40000) AS g;
"""


@dataclass
class Measurements:
    times: dict[str, list[float]] = field(default_factory=dict)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

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


def _psql(container: Container, sql: str, database: str = "app") -> str:
    result = container.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", USER, "-d", database,
                             "-A", "-t", "-c", sql])
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


def start_container(image: str) -> Container:
    client = engine()
    name = f"pgrunbook-bench-{uuid.uuid4().hex[:8]}"
    model = client.containers.run(
        image, name=name, detach=True, network_mode="none",
        environment={"POSTGRES_USER": USER, "POSTGRES_DB": "app", "POSTGRES_HOST_AUTH_METHOD": "trust"},
        labels={"pgrunbook.bench": "1"},
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


def fill(container: Container, size_mb: float) -> int:
    _psql(container, SCHEMA_SQL)
    empty = int(_psql(container, "SELECT pg_database_size('app')"))
    while True:
        size = int(_psql(container, "SELECT pg_database_size('app')"))
        if size - empty >= size_mb * 1024 * 1024:
            break
        _psql(container, BATCH_SQL)
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
    except OSError:
        pass
    return info


def run(size_mb: float, rounds: int, image: str, output: Path, compression: str = "1") -> dict[str, Any]:
    docker_cli = shutil.which("docker")
    if not docker_cli:
        raise SystemExit("the hand procedure needs the docker CLI on PATH")
    container = start_container(image)
    work = Path(tempfile.mkdtemp(prefix="pgrunbook-bench-"))
    results = Measurements()
    try:
        actual = fill(container, size_mb)
        _psql(container, 'CREATE DATABASE "tiny"', "postgres")
        container.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", USER, "-d", "tiny"],
                       stdin=iter([sample_sql()]))
        name = container.name
        (work / ".env.bench").write_text(
            f"DB_CONTAINER={name}\nDB_NAME=app\nDUMP_COMPRESSION={compression}\n"
        )
        (work / ".env.tiny").write_text(f"DB_CONTAINER={name}\nDB_NAME=tiny\n")
        env = {**os.environ, "PGRUNBOOK_HOME": str(work)}
        invoke = [sys.executable, "-m", "invoke", "-r", str(ROOT)]
        hand_dir = work / "hand"
        hand_dir.mkdir()

        def hand_backup(database: str) -> None:
            settle(container)
            started = time.perf_counter()
            _run([docker_cli, "exec", "-i", name, "pg_dump", "-U", USER, "-d", database, "-F", "c",
                  "-f", "/tmp/hand.dump"])
            target = hand_dir / f"{database}.dump"
            target.unlink(missing_ok=True)
            _run([docker_cli, "cp", f"{name}:/tmp/hand.dump", str(target)])
            results.add(f"hand_backup_{database}", time.perf_counter() - started)
            results.sizes["hand_archive"] = target.stat().st_size if database == "app" else \
                results.sizes.get("hand_archive", 0)
            container.exec(["rm", "-f", "/tmp/hand.dump"])

        def kit_backup(env_name: str) -> Path:
            settle(container)
            done = _run(invoke + ["backup", f"--env={env_name}"], env=env)
            results.add(f"kit_backup_{env_name}", done.seconds, done.rss_mb)
            path = Path(done.last_line)
            if env_name == "bench":
                results.sizes["kit_archive"] = path.stat().st_size
            return path

        def hand_restore() -> None:
            settle(container)
            started = time.perf_counter()
            psql = [docker_cli, "exec", "-i", name, "psql", "-U", USER, "-d", "postgres", "-c"]
            _run(psql + ["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app';"])
            _run(psql + ["DROP DATABASE app;"])
            _run(psql + ["CREATE DATABASE app;"])
            _run([docker_cli, "cp", str(hand_dir / "app.dump"), f"{name}:/tmp/hand.dump"])
            _run([docker_cli, "exec", "-i", name, "pg_restore", "-U", USER, "-d", "app", "/tmp/hand.dump"])
            results.add("hand_restore", time.perf_counter() - started)
            container.exec(["rm", "-f", "/tmp/hand.dump"])

        def kit_restore(path: Path) -> None:
            settle(container)
            done = _run(invoke + ["restore-replace", "--env=bench", f"--file={path}",
                                  "--confirm=bench"], env=env)
            results.add("kit_restore", done.seconds, done.rss_mb)
            previous = done.last_line
            _run(invoke + ["restore-drop", "--env=bench", f"--db={previous}", "--confirm=bench"], env=env)

        for round_number in range(rounds):
            kit_first = round_number % 2 == 1
            for step in ("kit", "hand") if kit_first else ("hand", "kit"):
                if step == "hand":
                    hand_backup("app")
                    hand_backup("tiny")
                else:
                    kit_path = kit_backup("bench")
                    kit_backup("tiny")
            for step in ("kit", "hand") if kit_first else ("hand", "kit"):
                if step == "hand":
                    hand_restore()
                else:
                    kit_restore(kit_path)
        report = summarize(results, actual, rounds, image, compression)
    finally:
        container.model.remove(force=True, v=True)
        shutil.rmtree(work, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    (output / "bench.md").write_text(markdown(report), encoding="utf-8")
    return report


def summarize(results: Measurements, size: int, rounds: int, image: str, compression: str) -> dict[str, Any]:
    backup_ratio = results.median("kit_backup_bench") / results.median("hand_backup_app")
    restore_ratio = results.median("kit_restore") / results.median("hand_restore")
    overhead = results.median("kit_backup_tiny") - results.median("hand_backup_tiny")
    peak = max(max(values) for values in results.rss_mb.values())
    return {
        "kind": "pgrunbook-bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "image": image,
        "database_bytes": size,
        "rounds": rounds,
        "kit_compression": compression,
        "times_seconds": results.times,
        "medians_seconds": {name: round(results.median(name), 3) for name in results.times},
        "kit_peak_rss_mb": results.rss_mb,
        "archive_bytes": results.sizes,
        "ratios": {
            "backup": round(backup_ratio, 3),
            "restore_replace": round(restore_ratio, 3),
            "tiny_overhead_seconds": round(overhead, 3),
            "peak_rss_mb": round(peak, 1),
        },
        "targets": TARGETS,
        "met": {
            "backup": backup_ratio <= TARGETS["backup_ratio"],
            "restore_replace": restore_ratio <= TARGETS["restore_ratio"],
            "tiny_overhead": overhead <= TARGETS["tiny_overhead_seconds"],
            "peak_rss": peak <= TARGETS["peak_rss_mb"],
        },
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["medians_seconds"]
    r = report["ratios"]
    t = report["targets"]
    ok = {key: "達成" if value else "未達" for key, value in report["met"].items()}
    host = report["machine"]
    mib = {key: value / 1024 / 1024 for key, value in report["archive_bytes"].items()}
    rows = [
        ("バックアップ", f"{m['hand_backup_app']:.2f} 秒", f"{m['kit_backup_bench']:.2f} 秒",
         f"{r['backup']:.2f}", f"≤ {t['backup_ratio']}", ok["backup"]),
        ("置き換えリストア", f"{m['hand_restore']:.2f} 秒", f"{m['kit_restore']:.2f} 秒",
         f"{r['restore_replace']:.2f}", f"≤ {t['restore_ratio']}", ok["restore_replace"]),
        ("小さな DB のバックアップ", f"{m['hand_backup_tiny']:.2f} 秒", f"{m['kit_backup_tiny']:.2f} 秒",
         f"差 {r['tiny_overhead_seconds']:+.2f} 秒", f"≤ {t['tiny_overhead_seconds']} 秒",
         ok["tiny_overhead"]),
        ("キットの最大メモリ（RSS）", "", f"{r['peak_rss_mb']:.0f} MB", "", f"≤ {t['peak_rss_mb']} MB",
         ok["peak_rss"]),
    ]
    lines = [
        f"測定日時: {report['when']} / DB サイズ: {report['database_bytes'] / 1024 / 1024:.0f} MiB / "
        f"{report['rounds']} 回の中央値 / イメージ: `{report['image']}`",
        "",
        f"マシン: {host.get('cpu', '')}、{host.get('cpus')} コア、{host.get('memory_gb', '?')} GB、"
        f"Python {host.get('python')}",
        "",
        "| 項目 | 手作業（手順書） | キット | 比率 | 目標 | 結果 |",
        "|---|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"アーカイブサイズ: 手作業（pg_dump 既定の圧縮） {mib.get('hand_archive', 0):.1f} MiB、"
        f"キット（-Z {report['kit_compression']}） {mib.get('kit_archive', 0):.1f} MiB",
        "",
    ]
    return "\n".join(lines)


PAGE_START = "<!-- bench:start -->"
PAGE_END = "<!-- bench:end -->"


def update_page(page: Path, report_markdown: str) -> None:
    """Replace the block between the bench markers of a runbook page with the report."""
    text = page.read_text(encoding="utf-8")
    head, start, rest = text.partition(PAGE_START)
    _old, end, tail = rest.partition(PAGE_END)
    if not start or not end:
        raise SystemExit(f"{page} has no {PAGE_START} ... {PAGE_END} block")
    page.write_text(f"{head}{PAGE_START}\n{report_markdown}\n{PAGE_END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=900)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", default=os.environ.get("PGRUNBOOK_TEST_IMAGE", "postgres:15"))
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--compression", default="1")
    parser.add_argument("--page", type=Path, help="a runbook page whose report block to replace")
    args = parser.parse_args(argv)
    report = run(args.size_mb, args.rounds, args.image, args.output, args.compression)
    if args.page:
        update_page(args.page, markdown(report))
    sys.stdout.write(markdown(report))
    sys.stdout.write(f"\n{args.output / 'bench.json'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
