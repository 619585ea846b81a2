"""``python -m atp.bench``: see :mod:`atp.bench`."""

from atp.bench import main

main()
