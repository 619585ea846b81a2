"""``python -m atp.data.toy out=data/toy ...``: see :func:`atp.data.toy.cli.main`."""

import sys

from atp.data.toy.cli import main

sys.exit(main())
