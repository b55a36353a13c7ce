"""The `flexunet` command line (installed as flexunet_k3.cli). Keras is imported inside commands."""

import sys


def main() -> None:
    """The `flexunet` console script. Ctrl-C while the command line is still loading ends it as
    Ctrl-C does later (one line, exit 130), not with a traceback."""
    try:
        from .app import main as run_command_line
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    run_command_line()
