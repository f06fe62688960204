"""``python -m josefine.check HISTORY``: see `josefine.check.cli`."""
import sys

from josefine.check.cli import main

sys.exit(main())
