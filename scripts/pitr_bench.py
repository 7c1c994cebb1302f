#!/usr/bin/env python3
"""How long a restore takes: pg_dump (restore-scratch) against pgBackRest (pitr-restore-scratch).

    python scripts/pitr_bench.py --size-mb 500 [--wal-mb 200] [--base kit-postgres:15-pgbackrest]

Builds examples/pitr/Dockerfile on the base image, starts a disposable DB
container (no network) with the command of examples/pitr/compose.yaml, fills
it with the benchmark's dataset (pgrunbook.bench), then through the real CLI:
``backup`` + ``pitr-setup`` + ``pitr-backup --type=full``, writes --wal-mb more
data (WAL that a point-in-time restore must replay), and times
``restore-scratch`` (the newest pg_dump into a new database) and
``pitr-restore-scratch --target-time=now`` (the files of the base backup, then
the WAL). Prints a Markdown table; asserts nothing. Everything it made is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pgrunbook.infra.container import Container, engine  # noqa: E402
from pgrunbook.lab.bench import BATCH_SQL, SCHEMA_SQL  # noqa: E402

PASSWORD = "bench-pw"


def psql(container: Container, sql: str, database: str = "app") -> str:
    result = container.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "app", "-d", database,
                             "-A", "-t", "-c", sql], environment={"PGPASSWORD": PASSWORD})
    if not result.ok:
        raise RuntimeError(result.stderr)
    return result.stdout.decode().strip()


def fill_mb(container: Container, megabytes: float) -> None:
    start = int(psql(container, "SELECT pg_database_size('app')"))
    while int(psql(container, "SELECT pg_database_size('app')")) - start < megabytes * 1024 * 1024:
        psql(container, BATCH_SQL)


def invoke(home: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=home,
                          env={**os.environ, "PGRUNBOOK_HOME": str(home)}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"invoke {' '.join(args)}: {done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=float, default=500)
    parser.add_argument("--wal-mb", type=float, default=100)
    parser.add_argument("--base", default="kit-postgres:15-pgbackrest")
    options = parser.parse_args()

    client = engine()
    run = uuid.uuid4().hex[:8]
    tag = f"pgrunbook-bench-pitr-{run}:15"
    name = f"pgrunbook-bench-pitr-{run}"
    client.images.build(path=str(ROOT / "examples" / "pitr"), tag=tag, network_mode="none", rm=True,
                        buildargs={"POSTGRES_IMAGE": options.base})
    service = yaml.safe_load((ROOT / "examples" / "pitr" / "compose.yaml").read_text())["services"]["db"]
    volumes = {f"{name}-{spec.split(':')[0]}": {"bind": spec.split(":")[1], "mode": "rw"}
               for spec in service["volumes"]}
    model = client.containers.run(
        tag, command=service["command"], name=name, detach=True, network_mode="none",
        environment={"POSTGRES_USER": "app", "POSTGRES_DB": "app", "POSTGRES_PASSWORD": PASSWORD,
                     "PGBACKREST_REPO1_CIPHER_PASS": "bench-cipher"},
        volumes=volumes, labels={"pgrunbook.lab.bench": "1"})
    home = Path(tempfile.mkdtemp(prefix="pgrunbook-pitr-bench-"))
    (home / ".env.bench").write_text(f"DB_CONTAINER={name}\nDB_PASSWORD={PASSWORD}\nPITR_STANZA=knot\n")
    try:
        container = Container(client, model)
        for _ in range(400):
            if b"init process complete" in model.logs() and container.exec(["pg_isready", "-q"]).ok:
                break
            time.sleep(0.3)
        psql(container, SCHEMA_SQL)
        fill_mb(container, options.size_mb)
        size = int(psql(container, "SELECT pg_database_size('app')"))
        dump_seconds, _ = invoke(home, "backup", "--env=bench")
        invoke(home, "pitr-setup", "--env=bench")
        base_seconds, _ = invoke(home, "pitr-backup", "--env=bench", "--type=full")
        fill_mb(container, options.wal_mb)
        target = psql(container, "SELECT clock_timestamp()")
        pg_restore_seconds, _ = invoke(home, "restore-scratch", "--env=bench")
        pitr_seconds, pitr_out = invoke(home, "pitr-restore-scratch", "--env=bench",
                                        f"--target-time={target}")
        scratch = pitr_out.strip().splitlines()[-1]
        log = home / "backups" / "bench" / "worklog.jsonl"
        record = [json.loads(line) for line in log.open(encoding="utf-8")][-1]
        invoke(home, "pitr-scratch-drop", "--env=bench", f"--name={scratch}")
        print(f"| DB サイズ | {size / 1048576:.0f} MiB"
              f"（ベースバックアップ後の書き込み {options.wal_mb:.0f} MB） |")
        print("|---|---|")
        print(f"| backup（pg_dump） | {dump_seconds:.1f} 秒 |")
        print(f"| pitr-backup --type=full | {base_seconds:.1f} 秒 |")
        print(f"| restore-scratch（pg_restore、別 DB へ） | {pg_restore_seconds:.1f} 秒 |")
        print(f"| pitr-restore-scratch（別コンテナへ、全体） | {pitr_seconds:.1f} 秒"
              f"（リストア {record.get('restore_seconds')} 秒 + "
              f"WAL 再生 {record.get('recovery_seconds')} 秒） |")
    finally:
        model.remove(force=True, v=True)
        for volume in volumes:
            with contextlib.suppress(Exception):
                client.volumes.get(volume).remove(force=True)
        client.images.remove(tag, force=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
