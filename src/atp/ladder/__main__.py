import sys

from atp.ladder.cli import main

sys.exit(main())
