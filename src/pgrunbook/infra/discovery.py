"""Which container an env means: by name or ID (DB_CONTAINER), or the way Docker
Compose names it (DB_SERVICE + optional COMPOSE_PROJECT, APP_SERVICES).

Compose names a service's container ``<project>-<service>-<n>`` (v2) or
``<project>_<service>_<n>`` (v1), with a project prefix per checkout, so a name
in a settings file goes stale. Compose also labels every container it makes
(``com.docker.compose.project`` / ``.service`` / ``.container-number``): those
labels are what this module looks for, through one Engine API list call.

The resolved container is also what separates envs: two envs whose settings
differ as text (a name and an ID, a name and a service) but resolve to the same
container and the same DB_NAME are one database, and every task that touches
it refuses (issue 11, defect 11).

``bind(settings)`` returns the settings with ``db_container`` set to the
resolved container's name (and ``db_container_id`` to its ID), and
``app_containers`` extended by the APP_SERVICES' containers, so that code
downstream (backup, restore, the app stop/start) keeps working on names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from docker.errors import APIError, NotFound

from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings, sibling_settings
from pgrunbook.infra.container import Container, engine

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"


@dataclass(frozen=True)
class Candidate:
    """One container as the Engine's list call shows it (no inspect)."""

    id: str
    name: str
    state: str
    project: str
    service: str
    number: str

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> Candidate:
        labels = summary.get("Labels") or {}
        names = summary.get("Names") or [""]
        return cls(
            id=summary.get("Id", ""),
            name=names[0].lstrip("/"),
            state=summary.get("State", ""),
            project=labels.get(PROJECT_LABEL, ""),
            service=labels.get(SERVICE_LABEL, ""),
            number=labels.get(NUMBER_LABEL, ""),
        )

    def describe(self) -> str:
        number = f" #{self.number}" if self.number else ""
        return f"{self.name}（プロジェクト {self.project}{number}、{self.state}）"


def reference(settings: Settings) -> str:
    """How the settings name the DB container, for messages."""
    if settings.db_service:
        project = f", COMPOSE_PROJECT={settings.compose_project}" if settings.compose_project else ""
        return f"DB_SERVICE={settings.db_service}{project}"
    return f"DB_CONTAINER={settings.db_container}"


def service_candidates(client: Any, service: str, project: str = "") -> list[Candidate]:
    """Every container (running or not) Compose made for the service, one API call."""
    labels = [f"{SERVICE_LABEL}={service}"]
    if project:
        labels.append(f"{PROJECT_LABEL}={project}")
    try:
        found = client.api.containers(all=True, filters={"label": labels})
    except APIError as error:
        raise RunbookError(f"コンテナの一覧を取得できません: {error.explanation}") from error
    candidates = [Candidate.from_summary(summary) for summary in found]
    return sorted(candidates, key=lambda c: (c.project, c.number.zfill(4), c.name))


def compose_services(client: Any) -> list[str]:
    """'project/service' of every running Compose container (for a hint)."""
    try:
        found = client.api.containers(filters={"label": [SERVICE_LABEL]})
    except APIError:
        return []
    seen = {f"{c.project}/{c.service}" for c in map(Candidate.from_summary, found)}
    return sorted(seen)


def _where(service: str, project: str) -> str:
    return f"サービス {service}" + (f"（プロジェクト {project}）" if project else "")


def find_service_container(client: Any, service: str, project: str, key: str = "DB_SERVICE") -> Any:
    """Exactly one running container of the service, or a clear error listing candidates."""
    candidates = service_candidates(client, service, project)
    running = [c for c in candidates if c.state == "running"]
    where = _where(service, project)
    if len(running) == 1:
        return client.containers.get(running[0].id)
    if running:
        listing = ", ".join(c.describe() for c in running)
        projects = sorted({c.project for c in running})
        hint = (f"COMPOSE_PROJECT で 1 つに絞る（候補: {', '.join(projects)}）" if len(projects) > 1
                else "DB はレプリカ 1 つで動かす（docker compose up --scale で 1 に）か、"
                     "DB_CONTAINER にコンテナ名を指定")
        raise RunbookError(f"{where} のコンテナが {len(running)} つ稼働していて 1 つに決まりません: "
                           f"{listing}", hint, exit_code=2)
    if candidates:
        listing = ", ".join(c.describe() for c in candidates)
        project_flag = f" -p {candidates[0].project}" if candidates[0].project else ""
        raise RunbookError(f"{where} のコンテナは稼働していません: {listing}",
                           f"docker compose{project_flag} up -d {service} で起動してから再実行")
    known = compose_services(client)
    listing = ", ".join(known) if known else "（Compose のコンテナは稼働していません）"
    raise RunbookError(
        f"{where} のコンテナが見つかりません（ラベル {SERVICE_LABEL}={service}）",
        f"{key} / COMPOSE_PROJECT を確認（docker compose ps）。稼働中のプロジェクト/サービス: {listing}",
        exit_code=2,
    )


def find_named_container(client: Any, name: str, key: str = "DB_CONTAINER") -> Any:
    """The container with this name or ID (prefix), running."""
    try:
        model = client.containers.get(name)
    except NotFound:
        running = sorted(c.name for c in client.containers.list())
        listing = ", ".join(running) if running else "（稼働中のコンテナはありません）"
        raise RunbookError(f"コンテナ {name!r} が見つかりません",
                           f"{key} を確認。稼働中のコンテナ: {listing}") from None
    except APIError as error:
        raise RunbookError(f"コンテナ {name!r} を調べられません: {error.explanation}") from error
    if model.status != "running":
        raise RunbookError(f"コンテナ {model.name!r} は停止しています（状態: {model.status}）",
                           f"docker start {model.name} で起動してから再実行")
    return model


def find_db_container(settings: Settings, client: Any) -> Any:
    """The env's DB container (a docker SDK model), running, or a RunbookError."""
    if settings.db_service:
        return find_service_container(client, settings.db_service, settings.compose_project)
    return find_named_container(client, settings.db_container)


def db_container(settings: Settings, client: Any | None = None) -> Container:
    """The env's DB container as the kit's Container wrapper (DB_CONTAINER or DB_SERVICE)."""
    client = client or engine()
    return Container(client, find_db_container(settings, client))


def container_ids_of(settings: Settings, client: Any) -> set[str]:
    """Every container ID an env's settings could mean, running or not, never raising:
    the other side of the separation check must not fail because that env is down."""
    try:
        if settings.db_service:
            return {c.id for c in service_candidates(client, settings.db_service,
                                                     settings.compose_project)}
        return {client.containers.get(settings.db_container).id}
    except (RunbookError, NotFound, APIError):
        return set()


def envs_sharing_database(settings: Settings, container_id: str, client: Any) -> list[str]:
    """The other envs of this folder that resolve to the same container and DB_NAME."""
    shared = []
    for other in sibling_settings(settings):
        if other.db_name != settings.db_name:
            continue  # another database on the same server is a normal set-up
        if container_id in container_ids_of(other, client):
            shared.append(other.env)
    return shared


def same_database_error(settings: Settings, model: Any, others: list[str]) -> RunbookError:
    names = ", ".join(others)
    files = " / ".join(f".env.{env}" for env in [settings.env, *others])
    return RunbookError(
        f"環境 {settings.env} と {names} が同じ DB（コンテナ {model.name}、ID {model.id[:12]} の "
        f"{settings.db_name}）を指しています。設定の書き方が違っても同じコンテナです",
        f"{files} の DB_CONTAINER / DB_SERVICE / DB_NAME を見直す（本番と開発は必ず別の DB）",
        exit_code=2,
    )


def find_app_containers(settings: Settings, client: Any) -> list[Any]:
    """APP_CONTAINERS (names) and every container of APP_SERVICES, as docker SDK models.

    A service scaled to several containers gives all of them (all must stop
    writing); a service with no container at all is an error listing what runs.
    """
    models: dict[str, Any] = {}
    for name in settings.app_containers:
        try:
            model = client.containers.get(name)
        except NotFound:
            raise RunbookError(f"APP_CONTAINERS のコンテナ {name} がありません",
                               f".env.{settings.env} の APP_CONTAINERS を確認") from None
        models[model.id] = model
    for service in settings.app_services:
        candidates = service_candidates(client, service, settings.compose_project)
        projects = sorted({c.project for c in candidates})
        if len(projects) > 1:
            listing = ", ".join(c.describe() for c in candidates)
            raise RunbookError(
                f"APP_SERVICES の {service} が複数のプロジェクトにあります: {listing}",
                f"COMPOSE_PROJECT で 1 つに絞る（候補: {', '.join(projects)}）", exit_code=2)
        if not candidates:
            known = compose_services(client)
            listing = ", ".join(known) if known else "（Compose のコンテナは稼働していません）"
            raise RunbookError(
                f"APP_SERVICES の {_where(service, settings.compose_project)} のコンテナがありません",
                f".env.{settings.env} の APP_SERVICES / COMPOSE_PROJECT を確認。"
                f"稼働中のプロジェクト/サービス: {listing}", exit_code=2)
        for candidate in candidates:
            models.setdefault(candidate.id, client.containers.get(candidate.id))
    return list(models.values())


def app_container_names(settings: Settings, client: Any | None = None) -> tuple[str, ...]:
    """APP_CONTAINERS + the containers of APP_SERVICES, as names (what restore stops)."""
    if not settings.app_services:
        return settings.app_containers
    return tuple(model.name for model in find_app_containers(settings, client or engine()))


def bind(settings: Settings, apps: bool = False, client: Any | None = None) -> Settings:
    """The settings with the DB container resolved (name and ID), after refusing an env
    that shares its database with another env; with ``apps``, APP_SERVICES resolved
    into ``app_containers`` too (and refused when another env would stop the same)."""
    client = client or engine()
    model = find_db_container(settings, client)
    others = envs_sharing_database(settings, model.id, client)
    if others:
        raise same_database_error(settings, model, others)
    changes: dict[str, Any] = {"db_container": model.name, "db_container_id": model.id}
    if apps and settings.app_services:
        app_models = find_app_containers(settings, client)
        _refuse_shared_apps(settings, app_models, client)
        changes["app_containers"] = tuple(m.name for m in app_models)
    return dataclasses.replace(settings, **changes)


def _refuse_shared_apps(settings: Settings, models: list[Any], client: Any) -> None:
    mine = {model.id: model.name for model in models}
    for other in sibling_settings(settings):
        if not (other.app_services or other.app_containers):
            continue
        try:
            theirs = {model.id for model in find_app_containers(other, client)}
        except RunbookError:
            continue
        shared = sorted(mine[i] for i in set(mine) & theirs)
        if shared:
            raise RunbookError(
                f"環境 {settings.env} と {other.env} のアプリのコンテナに同じもの "
                f"{', '.join(shared)} があります（別環境の作業で止めてしまいます）",
                f".env.{settings.env} と .env.{other.env} の APP_CONTAINERS / APP_SERVICES を見直す",
                exit_code=2,
            )
