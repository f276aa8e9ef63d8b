"""`python -m export ...` is the `kt-export` command line."""

import sys

from export.cli import main

sys.exit(main())
