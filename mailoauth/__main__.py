"""``python -m mailoauth``: the ``mailoauth`` command."""

import sys

from mailoauth.cli import main

sys.exit(main())
