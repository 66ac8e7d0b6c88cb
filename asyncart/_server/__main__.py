"""``python -m asyncart._server serve|token ...`` (until the ``asyncart`` CLI wires them in)."""

import sys

from ._main import main

sys.exit(main())
