"""``python -m npguest``: the ``npguest`` command."""

import sys

from npguest.cli import main

sys.exit(main())
