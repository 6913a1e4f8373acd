"""`python -m sampler.bench [flags]`: the bench with every flag (flags.py), as `steer bench`."""

import sys

from .flags import parser
from .run import main

if __name__ == "__main__":
    sys.exit(main(parser().parse_args()))
