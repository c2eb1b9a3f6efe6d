import sys

from fracture.cli import main

sys.exit(main())
