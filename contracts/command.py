"""What every package's command shares: one line per user error, and nothing downloaded at run time.

Each stage owns its command (`adamix-train` here, `adamix-export` in `exporters`, `adamix-serve` in `serving`,
`adamix-demo` in `demo`); all of them wrap their click command with `run_one_line_errors`. This module imports
click and the error types only, so the server's and the demo's commands start without torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from adamix_deploy.contracts.errors import AdamixError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# transformers 5 draws a bar for every load and save ("Loading weights", "Writing model shards"); an error must
# stay one line, and our commands report their own progress
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run_one_line_errors(command: click.Command) -> Callable[[], None]:
    def main() -> None:
        try:
            command.main(standalone_mode=False)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"{command.name}: error: {e.format_message()}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo(f"{command.name}: aborted", err=True)
            sys.exit(130)
        except AdamixError as e:
            click.echo(f"{command.name}: error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(f"{command.name}: interrupted (the last saved checkpoint is intact)", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not a user error: still one line, the traceback on request
            if os.environ.get("ADAMIX_DEBUG"):
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(
                f"{command.name}: internal error: {type(e).__name__}: {first} (ADAMIX_DEBUG=1 shows the traceback)",
                err=True,
            )
            sys.exit(1)

    return main
