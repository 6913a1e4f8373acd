"""`python -m sampler.learn ...`: the same as `steer learn ...`."""

import sys

from .cli import main

sys.exit(main())
