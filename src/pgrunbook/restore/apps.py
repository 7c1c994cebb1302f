"""The app containers stopped during a replace and started again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgrunbook.core import faults
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.infra import discovery
from pgrunbook.infra.container import engine


class AppWrites:
    """Stops the app containers named in the settings and starts them again."""

    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.stopped: list[Any] = []
        self.models: list[Any] = []

    def check(self) -> None:
        """APP_CONTAINERS and APP_SERVICES (Compose) as containers; a missing one is an error."""
        if not (self.settings.app_containers or self.settings.app_services):
            return
        self.models = discovery.find_app_containers(self.settings, engine())

    def stop(self, before_each: Callable[[str], None] | None = None) -> None:
        for model in self.models:
            model.reload()
            if model.status == "running":
                self.console.step(f"アプリのコンテナ {model.name} を停止（書き込み停止）")
                if before_each:  # the journal: a killed run's stopped apps are restarted by the recovery
                    before_each(model.name)
                self.stopped.append(model)  # before stop(): an interrupted stop is still restarted
                try:
                    model.stop(timeout=30)
                except Exception as error:  # noqa: BLE001 - docker errors become one line
                    raise RunbookError(f"アプリのコンテナ {model.name} を停止できません: {error}",
                                       "docker ps で状態を確認") from error
        if not self.settings.app_containers:
            self.console.warn("APP_CONTAINERS が未設定です。アプリの書き込みは止めていません"
                              "（切り替え時に接続は切断します）")

    def start(self, on_started: Callable[[str], None] | None = None) -> list[str]:
        """Start every app stopped here; ``on_started`` is told each one that runs again
        (the journal keeps the others for restore-recover). Returns the failures.

        An interruption (Ctrl-C, SIGTERM) in the middle does not leave the others
        stopped: they are started, the interrupted one is tried once more, and the
        interruption is raised after. A second interruption stops at once."""
        failed: dict[str, str] = {}
        interrupted: BaseException | None = None
        pending = list(self.stopped)
        while pending:
            model = pending.pop(0)
            try:
                faults.kill_point("apps-start")
                model.start()
            except (KeyboardInterrupt, SystemExit) as stop:
                if interrupted is not None:
                    raise
                interrupted = stop
                failed[model.name] = "中断されました"
                pending.append(model)  # once more, after the others
                continue
            except Exception as error:  # noqa: BLE001 - reported, never masks the restore's outcome
                failed[model.name] = str(error)
                continue
            failed.pop(model.name, None)
            self.stopped.remove(model)
            if on_started:
                on_started(model.name)
            self.console.step(f"アプリのコンテナ {model.name} を再開")
        if interrupted is not None:
            raise interrupted
        return [f"{name}: {error}" for name, error in failed.items()]
