#!/usr/bin/env python3
"""Lost exec outputs on a loaded host, before and after framing (runbooks/performance.md).

    python scripts/exec_stress.py --queries 500 [--busy 3] [--image kit-postgres:15]

The Docker Engine can lose an exec's whole output and still say exit code 0
(moby#27289, docker-py#2042). This starts a disposable PostgreSQL container (no
network), loads the host (``--busy`` processes spinning on the CPU) and the
server (pgbench writing, when the image has it; else a loop of inserts), then
runs ``SELECT 42`` ``--queries`` times each way through the kit's own exec:

* raw: ``Container.exec`` of ``psql -XAtqc 'SELECT 42'``, as the kit read
  answers before framing; an answer other than ``42`` with exit code 0 is a
  lost answer the kit would have taken as "no rows";
* framed: ``Postgres.query`` (framing.py): counts the frames that arrived
  broken (asked again), the queries that still failed after the retries, and
  any wrong answer (must be 0).

Prints a Markdown table and writes JSON with --output; asserts nothing. The
busy processes are ended by their PIDs and the container is removed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pgrunbook.core.settings import load_settings  # noqa: E402
from pgrunbook.infra.container import Container, ExecResult, engine  # noqa: E402
from pgrunbook.infra.framing import LostAnswer  # noqa: E402
from pgrunbook.infra.postgres import Postgres  # noqa: E402

PASSWORD = "stress-pw"
WRITE_LOOP = ("while :; do psql -X -q -U app -d app -c "
              "\"INSERT INTO load SELECT g, md5(g::text) FROM generate_series(1, 2000) g\" "
              ">/dev/null 2>&1; done")


class CountingContainer(Container):
    """The kit's container, counting the frames that arrived broken."""

    broken = 0

    def exec_framed(self, argv, **options) -> ExecResult:  # type: ignore[override]
        result = super().exec_framed(argv, **options)
        if not result.complete:
            self.broken += 1
        return result


def spin() -> None:
    while True:
        pass


def start_server(image: str, name: str) -> Container:
    client = engine()
    model = client.containers.run(
        image, name=name, detach=True, network_mode="none", labels={"pgrunbook.stress": "1"},
        environment={"POSTGRES_USER": "app", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "app"},
        command=["postgres", "-c", "max_connections=50"])
    container = CountingContainer(client, model)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        model.reload()
        if b"init process complete" in model.logs(tail=50) and container.exec(
                ["pg_isready", "-q", "-U", "app"]).ok:
            return container
        time.sleep(0.3)
    raise RuntimeError(model.logs(tail=50).decode("utf-8", "replace"))


def load_server(container: Container, seconds: int) -> str:
    """pgbench writing for ``seconds`` (or a loop of inserts): what loads the server."""
    environment = {"PGPASSWORD": PASSWORD}
    if container.exec(["sh", "-c", "command -v pgbench"]).ok:
        done = container.exec(["pgbench", "-i", "-s", "5", "-q", "-U", "app", "app"], environment=environment)
        if done.ok:
            container.start_detached(["pgbench", "-n", "-c", "4", "-j", "2", "-T", str(seconds),
                                      "-U", "app", "app"], environment)
            return "pgbench -c 4 -j 2"
    container.exec(["psql", "-X", "-q", "-U", "app", "-d", "app", "-c",
                    "CREATE TABLE IF NOT EXISTS load (id int, payload text)"], environment=environment)
    container.start_detached(["sh", "-c", WRITE_LOOP], environment)
    return "INSERT の繰り返し"


def raw_pass(container: Container, queries: int) -> dict[str, int]:
    found = {"answered": 0, "lost": 0, "failed": 0}
    argv = ["psql", "-X", "-A", "-t", "-q", "-U", "app", "-d", "app", "-c", "SELECT 42"]
    for _ in range(queries):
        result = container.exec(argv, environment={"PGPASSWORD": PASSWORD})
        if not result.ok:
            found["failed"] += 1
        elif result.stdout == b"42\n":
            found["answered"] += 1
        else:
            found["lost"] += 1
    return found


def framed_pass(pg: Postgres, queries: int) -> dict[str, int]:
    container = pg.container
    assert isinstance(container, CountingContainer)
    container.broken = 0
    found = {"answered": 0, "wrong": 0, "lost_after_retries": 0, "failed": 0}
    for _ in range(queries):
        try:
            rows = pg.query("SELECT 42", "app")
        except LostAnswer:
            found["lost_after_retries"] += 1
            continue
        except Exception:  # noqa: BLE001 - counted, the run goes on
            found["failed"] += 1
            continue
        found["answered" if rows == [["42"]] else "wrong"] += 1
    found["frames_broken_then_asked_again"] = container.broken
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--busy", type=int, default=3, help="processes spinning on the host's CPUs")
    parser.add_argument("--image", default=os.environ.get("PGRUNBOOK_TEST_IMAGE", "kit-postgres:15"))
    parser.add_argument("--name", default=f"pgrunbook-stress-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    container = start_server(args.image, args.name)
    spinners: list[multiprocessing.Process] = []
    try:
        home = Path(tempfile.mkdtemp(prefix="pgrunbook-stress-"))
        (home / ".env.stress").write_text(f"DB_CONTAINER={args.name}\nDB_NAME=app\nDB_USER=app\n"
                                          f"DB_PASSWORD={PASSWORD}\n")
        (home / ".env.stress").chmod(0o600)
        pg = Postgres(container, load_settings("stress", home, check_siblings=False))
        server_load = load_server(container, seconds=3600)
        for _ in range(args.busy):
            spinner = multiprocessing.Process(target=spin, daemon=True)
            spinner.start()
            spinners.append(spinner)
        started = time.monotonic()
        raw = raw_pass(container, args.queries)
        raw_seconds = time.monotonic() - started
        started = time.monotonic()
        framed = framed_pass(pg, args.queries)
        framed_seconds = time.monotonic() - started
    finally:
        for spinner in spinners:  # by their PIDs: only the processes this script started
            spinner.terminate()
            spinner.join(timeout=10)
        container.model.remove(force=True, v=True)
    report = {"image": args.image, "queries": args.queries, "busy_processes": args.busy,
              "cpus": os.cpu_count(), "server_load": server_load,
              "raw": raw, "raw_seconds": round(raw_seconds, 1),
              "framed": framed, "framed_seconds": round(framed_seconds, 1)}
    if args.output:
        args.output.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    print(f"| 読み方 | 問い合わせ | 届いた答え | 失われた答え | 再試行後も失敗 | 誤った答え | 時間 |\n"
          f"|---|---:|---:|---:|---:|---:|---:|\n"
          f"| 枠なし（exec の出力をそのまま） | {args.queries} | {raw['answered']} | {raw['lost']} | "
          f"— | — | {raw_seconds:.0f} 秒 |\n"
          f"| 枠あり（Postgres.query） | {args.queries} | {framed['answered']} | "
          f"{framed['frames_broken_then_asked_again']}（問い直した） | {framed['lost_after_retries']} | "
          f"{framed['wrong']} | {framed_seconds:.0f} 秒 |")
    print(f"負荷: ホストで {args.busy} プロセスが CPU を回し（{os.cpu_count()} コア）、"
          f"コンテナで {server_load}。{args.image}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
