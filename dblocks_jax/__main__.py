import sys

from dblocks_jax.cli import main

sys.exit(main())
