import sys

from dualgate.cli import main

sys.exit(main())
