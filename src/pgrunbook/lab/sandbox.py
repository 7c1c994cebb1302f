"""A disposable PostgreSQL container with knot-like sample data, for practice.

``sandbox-up`` creates the env's DB_CONTAINER from SANDBOX_IMAGE (no network:
everything goes through the Engine API), labels it as the kit's, and loads
the sample data (accounting entries, approvals, votes, audit log, in
Japanese). ``sandbox-down`` removes it, but only a container the kit made.
"""

from __future__ import annotations

import time
from importlib import resources

from docker.errors import APIError, ImageNotFound, NotFound

from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.infra.container import Container, engine
from pgrunbook.infra.manual import connect_command

LABEL = "pgrunbook.lab.sandbox"


def sample_sql() -> bytes:
    return resources.files("pgrunbook").joinpath("data/sample.sql").read_bytes()


def _ensure_image(client, settings: Settings, console: Console) -> None:
    image = settings.sandbox_image
    try:
        client.images.get(image)
        return
    except (ImageNotFound, APIError):  # APIError: a name the engine cannot parse; the pull says so
        pass
    console.step(f"イメージ {image} を取得")
    try:
        client.images.pull(image)
    except (APIError, ImageNotFound) as error:
        raise RunbookError(
            f"イメージ {image}（SANDBOX_IMAGE）が手元になく、取得もできません",
            f".env.{settings.env} に SANDBOX_IMAGE=<手元のイメージ>（docker images で確認）を書く"
            "（シェルの環境変数 SANDBOX_IMAGE=… は使われません）",
        ) from error


def _named_only(settings: Settings) -> None:
    if settings.db_service:
        raise RunbookError(
            f"環境 {settings.env} は DB_SERVICE（Compose）で DB を探す設定のため、サンドボックスは使えません",
            "練習用には DB_CONTAINER=knot-sandbox の環境（例: .env.dev）を別に作る",
            exit_code=2,
        )


def sandbox_up(settings: Settings, console: Console) -> str:
    _named_only(settings)
    if settings.protected:
        raise RunbookError(
            f"保護環境 {settings.env} にはサンドボックスを作れません", "--env=dev などで実行"
        )
    client = engine()
    try:
        existing = client.containers.get(settings.db_container)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.labels.get(LABEL) != settings.env:
            raise RunbookError(
                f"コンテナ {settings.db_container} は既にあり、サンドボックスではありません（触りません）",
                "別の DB_CONTAINER 名を .env."
                f"{settings.env} に設定",
            )
        if existing.status != "running":
            existing.start()
        console.summary(f"サンドボックス {settings.db_container} は起動済みです")
        return settings.db_container
    _ensure_image(client, settings, console)
    environment = {"POSTGRES_USER": settings.db_user, "POSTGRES_DB": settings.db_name}
    if settings.db_password:
        environment["POSTGRES_PASSWORD"] = settings.db_password
    else:
        environment["POSTGRES_HOST_AUTH_METHOD"] = "trust"
    console.step(f"コンテナ {settings.db_container} を {settings.sandbox_image} から起動")
    model = client.containers.run(
        settings.sandbox_image,
        name=settings.db_container,
        environment=environment,
        labels={LABEL: settings.env},
        network_mode="none",
        detach=True,
    )
    container = Container(client, model)
    _wait_ready(container, settings)
    console.step("サンプルデータ（会計・承認・投票・監査ログ）を投入")
    result = container.exec(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", settings.db_user, "-d", settings.db_name],
        environment=settings.password_environment(),
        stdin=iter([sample_sql()]),
    )
    if not result.ok:
        raise RunbookError(f"サンプルデータを投入できません: {result.error_text()}")
    console.summary(
        f"サンドボックス {settings.db_container}（{settings.db_name}）を用意しました: "
        f"invoke backup --env={settings.env} を試せます。ポートは公開していないので、中を見るには "
        f"{connect_command(settings, settings.db_name)}"
    )
    return settings.db_container


def _wait_ready(container: Container, settings: Settings, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.model.reload()
        if container.model.status not in ("running", "created"):
            raise RunbookError(
                f"サンドボックスが起動しません（状態: {container.model.status}）",
                f"docker logs {container.name} を確認",
            )
        logs = container.model.logs(tail=50)
        if b"init process complete" in logs:
            probe = container.exec(["pg_isready", "-q", "-U", settings.db_user])
            if probe.ok:
                return
        time.sleep(0.3)
    raise RunbookError("サンドボックスの PostgreSQL が時間内に起動しません", "docker logs を確認")


def sandbox_down(settings: Settings, console: Console) -> None:
    _named_only(settings)
    client = engine()
    try:
        model = client.containers.get(settings.db_container)
    except NotFound:
        console.summary(f"サンドボックス {settings.db_container} はありません")
        return
    if model.labels.get(LABEL) != settings.env:
        raise RunbookError(
            f"コンテナ {settings.db_container} は pgrunbook のサンドボックスではないため削除しません",
            "手で作ったコンテナは手で管理してください",
        )
    model.remove(force=True, v=True)
    console.summary(f"サンドボックス {settings.db_container} を削除しました")
