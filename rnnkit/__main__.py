"""python -m rnnkit: the command line (also what torchrun runs)."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C before the command starts: as within it (rnnkit.cli.Group)
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)

main(prog_name="rnnkit")
