"""Optimizers as optax transformations: GD+WD, SAM and IRE (:mod:`.transforms`, :mod:`.ire`)."""
