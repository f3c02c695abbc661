"""`python -m bench.cli VERB ...` (what torchrun runs: `torchrun ... -m bench.cli train ...`)."""
import sys

from bench.cli import main

sys.exit(main())
