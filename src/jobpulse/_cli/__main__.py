"""``python -m jobpulse._cli``: the ``jobpulse`` command."""

from jobpulse._cli import main

main()
