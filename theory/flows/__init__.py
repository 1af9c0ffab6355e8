"""Continuous-time models of GD+WD and the manifold they live on.

The manifold of minimizers on the sphere and its projections (:mod:`.manifold`,
:mod:`.gauss_newton`), the sharpness-reduction flow (:mod:`.reduction`), its continuation through
eigenvalue crossings (:mod:`.cluster`), the central flow (:mod:`.central`), Edge Flow
(:mod:`.edge`), the prediction from initialization (:mod:`.predict`) and the comparison of GD
with a flow (:mod:`.compare`), all built on the objects of :mod:`.common` (save times,
geometries, the integrator on ``Gamma``). :mod:`.path` chooses between the flows on ``Gamma``
and the central flow after a run's onset.
"""
