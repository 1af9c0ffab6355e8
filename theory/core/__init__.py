"""The foundations every other part of :mod:`theory` builds on.

Array types and the shared argument validators (:mod:`.types`, :mod:`.validate`), the library's
errors, linear algebra (:mod:`.linalg`, :mod:`.lanczos`), derivatives of the loss
(:mod:`.curvature`), scale invariance (:mod:`.invariance`), objectives (:mod:`.objective`) and
the spherical sharpness (:mod:`.sharpness`). Nothing here imports another subpackage of
:mod:`theory`.
"""
