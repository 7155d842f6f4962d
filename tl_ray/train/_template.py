"""Imported first by a trial template process (``tl_ray.train.trial_process``).

Python starts every child of a ``forkserver`` by re-running the parent's main script as
``__mp_main__`` unless the server already holds it as its ``__main__``. The server's own
``'__main__'`` preload never does that (it looks for a ``main_path`` its parent never sends), so
a Ray actor's children would each re-run Ray's worker script and import Ray again. This module
imports the script named by ``TLRAY_TEMPLATE_MAIN`` once, here, as the server's ``__main__``.

As in any child of ``multiprocessing``, a script that starts processes at import (no
``if __name__ == "__main__":`` guard) is refused with Python's own error instead of forking
without end; the template then leaves the script to each child, which refuses it the same way.
"""

from __future__ import annotations

import os

_main = os.environ.get("TLRAY_TEMPLATE_MAIN")
if _main and os.path.isfile(_main):
    from multiprocessing import process, spawn

    process.current_process()._inheriting = True  # what the forkserver sets for its own preload
    try:
        spawn.import_main_path(_main)
    except Exception:  # noqa: S110 - an unguarded script: each child raises Python's bootstrapping error
        pass
    finally:
        del process.current_process()._inheriting
