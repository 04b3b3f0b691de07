"""``python -m retool.cli``: the ``retool`` command."""

from retool.cli import main

main()
