"""python -m rnnkit: the command line (also what torchrun runs)."""

from .cli import main

main(prog_name="rnnkit")
