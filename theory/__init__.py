"""Pure mathematics of the sharpness-reduction simulator (no I/O, no plotting, no CLI).

Public surface (stable): :func:`spherical_sharpness`, :func:`gd_wd` and the helpers below.
Everything works on flat parameter vectors ``w`` of shape ``(D,)``; see MATH.md for the
definitions and STYLE.md for the conventions.
"""

from .curvature import grad_and_hvp as grad_and_hvp
from .curvature import grad_lambda1 as grad_lambda1
from .curvature import hvp as hvp
from .curvature import linearize_grad as linearize_grad
from .gd import DivergenceError as DivergenceError
from .gd import GDResult as GDResult
from .gd import gd_wd as gd_wd
from .gd import predicted_eos_onset as predicted_eos_onset
from .invariance import ScaleInvarianceError as ScaleInvarianceError
from .invariance import ScaleInvariant as ScaleInvariant
from .invariance import check_scale_invariance as check_scale_invariance
from .invariance import flatten_loss as flatten_loss
from .invariance import make_scale_invariant as make_scale_invariant
from .invariance import normalize as normalize
from .lanczos import LanczosResult as LanczosResult
from .lanczos import lanczos as lanczos
from .sharpness import eos_quantity as eos_quantity
from .sharpness import sharpness_eigs as sharpness_eigs
from .sharpness import spherical_sharpness as spherical_sharpness
