"""``python -m ssmlens``: the ``ssmlens`` command line."""

import sys

from ssmlens.interp.cli import main

sys.exit(main())
