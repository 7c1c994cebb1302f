"""The hand procedure each task replaces, as shell lines (for --dry-run and the docs).

These are the runbook's own commands with this env's settings filled in, so an
operator can always fall back to doing a step by hand. The password is never
written out: ``-e PGPASSWORD`` passes the operator's shell variable through.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pgrunbook.settings import Settings


def _relative(settings: Settings, path: Path) -> str:
    try:
        return str(path.relative_to(settings.config_dir))
    except ValueError:
        return str(path)


def _exec(settings: Settings, interactive_stdin: bool = True) -> str:
    password = " -e PGPASSWORD" if settings.db_password else ""
    flag = " -i" if interactive_stdin else ""
    return f"docker exec{flag}{password} {shlex.quote(settings.db_container)}"


def dump_argv(settings: Settings, fmt: str, no_owner: bool = False, no_acl: bool = False) -> list[str]:
    argv = ["pg_dump", "-U", settings.db_user, "-d", settings.db_name,
            "-F", "c" if fmt == "custom" else "p"]
    if fmt == "custom":
        argv += ["-Z", settings.dump_compression]
    if no_owner:
        argv.append("--no-owner")
    if no_acl:
        argv.append("--no-acl")
    return argv


def backup_commands(
    settings: Settings, fmt: str, target: Path, no_owner: bool = False, no_acl: bool = False
) -> list[str]:
    directory = shlex.quote(_relative(settings, target.parent))
    final = shlex.quote(_relative(settings, target))
    partial = shlex.quote(_relative(settings, target) + ".partial")
    dump = shlex.join(dump_argv(settings, fmt, no_owner, no_acl))
    lines = [
        f"mkdir -p {directory} && chmod 700 {directory}",
        f"{_exec(settings)} {dump} > {partial}",
    ]
    if fmt == "custom":
        lines.append(f"{_exec(settings)} pg_restore --list < {partial} > /dev/null")
    else:
        lines.append(f"tail -n 5 {partial}   # '-- PostgreSQL database dump complete' を確認")
    lines += [
        f"ls -lh {partial}",
        f"mv -n {partial} {final}",
        f"(cd {directory} && sha256sum {shlex.quote(target.name)} > "
        f"{shlex.quote(target.name + '.sha256')})",
    ]
    return lines


def verify_commands(settings: Settings, target: Path) -> list[str]:
    directory = shlex.quote(_relative(settings, target.parent))
    name = shlex.quote(target.name)
    path = shlex.quote(_relative(settings, target))
    lines = [
        f"ls -lh {path}",
        f"(cd {directory} && sha256sum -c {name}.sha256)",
    ]
    if target.suffix == ".dump":
        lines += [
            f"{_exec(settings)} pg_restore --list < {path} | grep -c 'TABLE DATA'",
            f"{_exec(settings)} pg_restore -f /dev/null < {path}",
        ]
    else:
        lines.append(f"tail -n 5 {path}   # '-- PostgreSQL database dump complete' を確認")
    return lines


def globals_argv(settings: Settings, with_role_passwords: bool = False) -> list[str]:
    argv = ["pg_dumpall", "-U", settings.db_user, "--globals-only"]
    if not with_role_passwords:
        argv.append("--no-role-passwords")
    return argv


def globals_commands(settings: Settings, target: Path, with_role_passwords: bool = False) -> list[str]:
    directory = shlex.quote(_relative(settings, target.parent))
    final = shlex.quote(_relative(settings, target))
    partial = shlex.quote(_relative(settings, target) + ".partial")
    dump = shlex.join(globals_argv(settings, with_role_passwords))
    return [
        f"mkdir -p {directory} && chmod 700 {directory}",
        f"(umask 077 && {_exec(settings)} {dump} > {partial})",
        f"tail -n 5 {partial}   # '-- PostgreSQL database cluster dump complete' を確認",
        f"mv -n {partial} {final}",
        f"(cd {directory} && sha256sum {shlex.quote(target.name)} > "
        f"{shlex.quote(target.name + '.sha256')})",
    ]
