"""What a new user ran into with the sandbox (fresh clone, README only): an image that
cannot be pulled named SANDBOX_IMAGE but not the file it goes in, and
``SANDBOX_IMAGE=… invoke sandbox-up`` on the shell was silently ignored.

The unpullable image lives on a registry at 127.0.0.1:9 (nothing listens there): the
engine's pull fails at once, and no traffic leaves the machine.
"""

from __future__ import annotations

import uuid

from helpers import IMAGE, Cli


def test_an_image_that_cannot_be_pulled_names_the_file_and_the_shell_rule(tmp_path, docker_engine):
    cli = Cli(tmp_path)
    name = f"pgrunbook-sandbox-{uuid.uuid4().hex[:6]}"
    missing = f"127.0.0.1:9/pgrunbook-missing-{uuid.uuid4().hex[:6]}:none"
    cli.write_env("dev", DB_CONTAINER=name, SANDBOX_IMAGE=missing).chmod(0o600)
    # the image a user would try on the shell: it exists, and still is not used
    result = cli("sandbox-up", "--env=dev", env={"SANDBOX_IMAGE": IMAGE})
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("エラー: ") and missing in lines[-1], result.stderr
    assert ".env.dev に SANDBOX_IMAGE=" in lines[-1] and "シェルの環境変数" in lines[-1], lines[-1]
    warned = [line for line in lines if line.startswith("警告: シェルの環境変数 SANDBOX_IMAGE")]
    assert warned and ".env.dev" in warned[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not [c for c in docker_engine.containers.list(all=True) if c.name == name]
