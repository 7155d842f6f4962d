"""Imported first by a trial template process (``tl_ray.train.trial_process``): Keras and TensorFlow,
without Keras's optional matplotlib.

When it is installed, Keras imports matplotlib with itself, for its gallery plots: about 0.3 s of the
template's 2.5–3 s of imports on a 2-core machine, which a sweep waits for before its first trial, and
for plots a trial never draws (tl-ray writes its plots in the driver). The template imports Keras with
matplotlib hidden, so Keras goes without it, as when it is not installed: in a trial process,
``keras.visualization.plot_image_gallery`` and ``plot_bounding_box_gallery`` say that matplotlib is
missing. Once Keras is in, it is no longer hidden: a trial that imports matplotlib itself gets it as
usual. (pandas, which Keras imports too, stays: pyarrow imports it in every trial process to convert
columns to NumPy.)
"""

from __future__ import annotations

import sys

OPTIONAL = ("matplotlib",)

_hidden = [name for name in OPTIONAL if name not in sys.modules]
for _name in _hidden:
    sys.modules[_name] = None  # what ``import`` reads as "not installed"
try:
    import keras  # noqa: F401 - imports TensorFlow
finally:
    for _name in _hidden:
        if _name in sys.modules and sys.modules[_name] is None:
            del sys.modules[_name]
