import sys

from mxrc.cli import main

sys.exit(main())
