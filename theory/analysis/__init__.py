"""Measurements on trajectories, one home each: the regime classifier (:mod:`.regimes`), the
curvature at GD's midpoints and along a trajectory (:mod:`.midpoint`), angles between directions
and moving averages (:mod:`.trajectory`), and power laws fitted to measured errors
(:mod:`.fits`)."""
