"""``python -m robust.cli`` (as torchrun starts it): the ``robust`` command."""

import sys

from robust.cli import main

sys.exit(main())
