"""``python -m atp.bench``: see :mod:`atp.bench.cli`."""

from atp.bench.cli import main

main()
