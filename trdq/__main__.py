"""``python -m trdq``: see :mod:`trdq.cli`."""

import sys

from trdq.cli import main

sys.exit(main())
