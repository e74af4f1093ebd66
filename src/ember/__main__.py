"""``python -m ember`` runs the same CLI as the ``ember`` console script.

Guarded, because sandbox processes are forked from a server that imports the parent's
main module by name (``multiprocessing``'s forkserver): importing must not run the CLI.
"""

import sys

from ember.cli import main

if __name__ == "__main__":
    sys.exit(main())
