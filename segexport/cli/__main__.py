"""`python -m segexport.cli`, as `python -m segexport`."""

import sys

from segexport.cli import main

sys.exit(main())
