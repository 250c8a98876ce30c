"""CLI command ``manifester server``: run the local Theos-compatible server."""

from __future__ import annotations

import signal
from types import FrameType

import click

from ..config import env

__all__ = ["commands", "server_command"]


@click.command("server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; loopback keeps it private.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0 = any free port).")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default="theos-data",
    show_default=True,
    help="Directory for the SQLite state, images and thumbnails (created if missing; survives restarts).",
)
@click.option("--project-key", default=None, help="Project key in the URL paths. Env: THEOS_PROJECT_KEY. Generated if unset.")
@click.option("--token", default=None, help="API token clients must send. Env: THEOS_API_TOKEN. Generated if unset.")
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True, help="Concurrent image downloads.")
@click.option("--access-log/--no-access-log", default=False, help="Log one line per request (never headers).")
def server_command(
    host: str, port: int, data_dir: str, project_key: str | None, token: str | None, workers: int, access_log: bool
) -> None:
    """Run a local Theos-compatible server for offline rehearsals and CI.

    It implements every call of the Theos Datasets API, downloads the images of
    uploaded manifests and keeps everything under --data. Stop it with Ctrl-C.

    \b
    Example:
      manifester server --port 8000 --data ./theos-data --project-key demo --token s3cret
      export THEOS_API_URL=http://127.0.0.1:8000 THEOS_PROJECT_KEY=demo THEOS_API_TOKEN=s3cret
    """
    from ..server import is_loopback, start_server

    key = project_key or env("THEOS_PROJECT_KEY")
    api_token = token or env("THEOS_API_TOKEN")
    if not is_loopback(host):
        click.echo(
            f"warning: binding {host} makes the server reachable from other machines; anyone with the token can use it",
            err=True,
        )
    running = start_server(
        data_dir, host=host, port=port, project_key=key, token=api_token, download_workers=workers, access_log=access_log
    )
    click.echo(f"Local Theos-compatible server on {running.url}")
    click.echo(f"  data:        {running.data_dir}")
    click.echo(f"  project key: {running.project_key}")
    if api_token is None:
        # Generated: shown once, here, to whoever started the server; never logged anywhere else.
        click.echo(f"  API token:   {running.token}   (generated; shown only now)")
    click.echo(f"  clients:     THEOS_API_URL={running.url} THEOS_PROJECT_KEY={running.project_key}")
    click.echo("Press Ctrl-C to stop.")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        running.wait()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
        signal.signal(signal.SIGTERM, previous)
    click.echo("stopped")


commands: list[click.Command] = [server_command]
