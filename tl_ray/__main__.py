"""``python -m tl_ray``: the ``tl-ray`` command."""

import sys

from tl_ray.cli import main

sys.exit(main())
