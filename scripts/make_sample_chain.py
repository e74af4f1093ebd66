"""Write a synthetic three-layer build chain for the demo: make_sample_chain.py <storage> <uuid>..."""

import sys
import uuid

from ember.build.sample import write_sample_chain
from ember.errors import EmberError
from ember.storage import open_storage


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: make_sample_chain.py <storage> <build uuid>...", file=sys.stderr)
        return 2
    try:
        write_sample_chain(open_storage(argv[0]), [uuid.UUID(text) for text in argv[1:]])
    except (EmberError, ValueError) as exc:
        print(f"make_sample_chain: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
