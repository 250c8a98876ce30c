"""``python -m manifester``: the same as the ``manifester`` command."""

from .cli import main

main()
