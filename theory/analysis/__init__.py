"""Measurements on trajectories: the regime classifier (:mod:`.regimes`)."""
