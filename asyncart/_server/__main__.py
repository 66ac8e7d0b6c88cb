"""``python -m asyncart._server serve|token ...``, the same as ``asyncart serve|token ...``."""

import sys

from ._main import main

sys.exit(main())
