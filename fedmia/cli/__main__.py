"""`python -m fedmia.cli`."""

import sys

from fedmia.cli import main

sys.exit(main())
