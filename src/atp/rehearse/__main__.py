import sys

from atp.rehearse.cli import main

sys.exit(main())
