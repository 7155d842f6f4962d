"""tl-ray: transfer learning at cluster scale on Ray and tf.distribute."""

__version__ = "0.1.0"
