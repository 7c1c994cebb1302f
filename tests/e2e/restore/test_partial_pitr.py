"""restore-diff and restore-partial --as-of: the rows as they were at a time, from a
pgBackRest restore into a scratch container (the PITR live server of examples/pitr/,
as tests/e2e/pitr builds it), and the scratch container gone afterwards."""

from __future__ import annotations

import time

from helpers import last_line
from helpers.pitr import psql, server_time, worklog


def test_the_votes_as_they_were_before_a_mistaken_update(engine, home, live, backed_up):
    psql(live, "CREATE TABLE public.ballots (id int PRIMARY KEY, topic text NOT NULL, choice text NOT NULL)")
    psql(live, "INSERT INTO public.ballots SELECT g, '予算', CASE WHEN g % 2 = 0 THEN '賛成' ELSE '反対' END "
               "FROM generate_series(1, 50) AS g")
    assert home("pitr-backup", "--env=prod", "--type=diff").returncode == 0
    time.sleep(1)
    before = server_time(live)
    expected = psql(live, "SELECT string_agg(id || choice, ',' ORDER BY id) FROM public.ballots")
    time.sleep(1)
    psql(live, "UPDATE public.ballots SET choice = '棄権'")  # the mistaken UPDATE without WHERE
    psql(live, "INSERT INTO public.ballots VALUES (51, '予算', '賛成')")  # a vote cast after it: kept

    shown = home("restore-diff", "--env=prod", f"--as-of={before}", "--table=public.ballots")
    assert shown.returncode == 1, shown.stderr
    assert "内容が違う（その後に更新） 50 行" in shown.stdout and "PITR" in shown.stdout

    done = home("restore-partial", "--env=prod", f"--as-of={before}", "--table=public.ballots",
                "--mode=changed", "--confirm=prod")
    assert done.returncode == 0, done.stderr
    now = psql(live, "SELECT string_agg(id || choice, ',' ORDER BY id) FROM public.ballots")
    assert now == expected + ",51賛成"
    record = worklog(home)[-1]
    assert record["task"] == "restore-partial" and record["result"] == "ok"
    assert record["as_of"] and record["scratch"] and record["counts"] == {"public.ballots": {"upd": 50}}
    # the scratch copies of both runs are gone
    assert not engine.containers.list(all=True, filters={"label": f"pgrunbook.pitr-source={live.name}"})
    undone = home("restore-partial-undo", "--env=prod", "--confirm=prod")
    assert undone.returncode == 0, undone.stderr
    assert psql(live, "SELECT count(*) FROM public.ballots WHERE choice = '棄権'") == "50"
    assert last_line(done.stdout) == record["run"]
