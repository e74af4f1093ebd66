"""``python -m ember`` runs the same CLI as the ``ember`` console script."""

import sys

from ember.cli import main

sys.exit(main())
