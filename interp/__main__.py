import sys

from ssmlens.interp.cli import main

sys.exit(main())
