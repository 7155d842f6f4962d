"""``python -m tl_ray.cli``: the ``tl-ray`` command."""

import sys

from tl_ray.cli import main

sys.exit(main())
