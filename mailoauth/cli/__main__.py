"""``python -m mailoauth.cli``."""

import sys

from mailoauth.cli import main

sys.exit(main())
