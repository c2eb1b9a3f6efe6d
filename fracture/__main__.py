"""`python -m fracture <verb>`: the command line (fracture/cli.py)."""

import sys

from fracture.cli import main

sys.exit(main())
