"""Operations commands: ``backup``, ``restore``, ``provision``, ``auth-config`` (registered in ``tapeline.cli``)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tapeline.bus.auth import deploy_config, namespace_streams
from tapeline.bus.backup import BackupError, backup, restore
from tapeline.bus.connection import NatsConnectError
from tapeline.bus.logging import configure_logging
from tapeline.config import ConfigError, Settings, load_settings
from tapeline.feeds import ConfigOpt, config_exit
from tapeline.pipeline import provision_system
from tapeline.session import nats_session

console = Console()
T = TypeVar("T")
NatsOpt = Annotated[str, typer.Option("--nats", help="NATS URL (default: TAPELINE_NATS_URL or embedded)")]
PrefixOpt = Annotated[str | None, typer.Option("--prefix", help="subject prefix (namespace)")]


def _settings(config: Path, **overrides: Any) -> Settings:
    try:
        s = load_settings(config, **overrides)
    except ConfigError as e:
        config_exit(e)
    configure_logging(s.log_level)
    return s


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run; a connection or backup failure is one line, exit 2."""
    try:
        return asyncio.run(main)
    except (NatsConnectError, BackupError) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


def _table(title: str, column: str, rows: dict[str, int]) -> None:
    t = Table(title=title)
    t.add_column("stream")
    t.add_column(column, justify="right")
    for name, n in rows.items():
        t.add_row(name, f"{n:,}")
    console.print(t)


def backup_cmd(
    directory: Annotated[Path, typer.Argument(help="a new or empty directory for the snapshots")],
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Snapshot every stream of the namespace (JetStream snapshot API, consumers included) into DIR."""
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    if directory.exists() and any(directory.iterdir()):
        typer.echo(f"backup: {directory} is not empty; give a new or empty directory", err=True)
        raise typer.Exit(2)

    async def main() -> dict[str, int]:
        async with nats_session(s.nats_url, s.data_path, name="tapeline-backup") as (nc, _):
            return await backup(nc, namespace_streams(s.prefix), directory)

    _table(f"Backup of {s.prefix} in {directory}", "bytes", _run(main()))


def restore_cmd(
    directory: Annotated[Path, typer.Argument(help="a directory written by `tapeline backup`")],
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Restore the streams backed up in DIR into a server that does not have them (as admin)."""
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    if not directory.is_dir():
        typer.echo(f"restore: {directory} is not a directory; give the directory `tapeline backup` wrote", err=True)
        raise typer.Exit(2)

    async def main() -> dict[str, int]:
        async with nats_session(s.nats_url, s.data_path, name="tapeline-restore", identity="admin") as (nc, _):
            return await restore(nc, directory)

    _table(f"Restored from {directory}", "messages", _run(main()))
    console.print("rebuild the projections from them: tapeline replay --out FILE (then swap it in)")


def provision_cmd(config: ConfigOpt = Path("tapeline.toml"), nats: NatsOpt = "", prefix: PrefixOpt = None) -> None:
    """Create or update the streams and KV buckets (as admin: other identities may not)."""
    s = _settings(config, prefix=prefix, nats_url=nats or None)

    async def main() -> None:
        async with nats_session(s.nats_url, s.data_path, name="tapeline-provision", identity="admin") as (nc, _):
            await provision_system(nc, s.prefix, s.retention)

    _run(main())
    console.print(f"provisioned {', '.join(namespace_streams(s.prefix))}")


def auth_config_cmd(prefix: Annotated[str, typer.Option(help="subject prefix")] = "tape") -> None:
    """Print the nats-server authorization block (every identity, passwords as env references)."""
    typer.echo(deploy_config(prefix), nl=False)
