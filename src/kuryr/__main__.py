"""``python -m kuryr``: the same as the ``kuryr`` command."""

from kuryr.cli import main

main.main()
