"""Pure mathematics of the sharpness-reduction simulator (no I/O, no plotting, no CLI).

Public surface (stable): :func:`spherical_sharpness`, :func:`gd_wd`,
:func:`project_to_manifold`, :func:`sharpness_flow`, :func:`central_flow`,
:func:`predict_from_init`, :func:`cluster_flow`, :func:`classify_regime` and the helpers below.
Everything works on flat parameter vectors ``w`` of shape ``(D,)``; see docs/theory.md for the
definitions and docs/conventions.md for the conventions.
"""

from .central_flow import CentralFlowField as CentralFlowField
from .central_flow import CentralFlowResult as CentralFlowResult
from .central_flow import EdgeEvent as EdgeEvent
from .central_flow import central_flow as central_flow
from .central_flow import equilibrium_on_gamma as equilibrium_on_gamma
from .central_flow import solve_sigma as solve_sigma
from .cluster_flow import ClusterFlowField as ClusterFlowField
from .cluster_flow import ClusterFlowResult as ClusterFlowResult
from .cluster_flow import cluster_flow as cluster_flow
from .curvature import grad_and_hvp as grad_and_hvp
from .curvature import grad_lambda1 as grad_lambda1
from .curvature import hvp as hvp
from .curvature import linearize_grad as linearize_grad
from .curvature import mixed_third as mixed_third
from .errors import DegenerateSharpnessError as DegenerateSharpnessError
from .errors import DegenerateSharpnessWarning as DegenerateSharpnessWarning
from .errors import ProjectionError as ProjectionError
from .flow import FlowResult as FlowResult
from .flow import SharpnessFlowField as SharpnessFlowField
from .flow import sharpness_flow as sharpness_flow
from .gauss_newton import gauss_newton_project as gauss_newton_project
from .gauss_newton import ls_tangent_projector as ls_tangent_projector
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
from .ire import diagonal_mask as diagonal_mask
from .ire import exact_flat as exact_flat
from .ire import fisher_diagonal as fisher_diagonal
from .ire import ire as ire
from .lanczos import LanczosResult as LanczosResult
from .lanczos import lanczos as lanczos
from .manifold import project_to_manifold as project_to_manifold
from .manifold import projection_info as projection_info
from .manifold import tangent_projector as tangent_projector
from .optim import gd_wd_transform as gd_wd_transform
from .optim import run_optimizer as run_optimizer
from .optim import sam as sam
from .predict import Prediction as Prediction
from .predict import predict_from_init as predict_from_init
from .predict import relaxation_cycle as relaxation_cycle
from .regimes import RegimeCriteria as RegimeCriteria
from .regimes import RegimeResult as RegimeResult
from .regimes import classify_regime as classify_regime
from .sharpness import eos_quantity as eos_quantity
from .sharpness import sharpness_eigs as sharpness_eigs
from .sharpness import spherical_sharpness as spherical_sharpness
from .tracking import compare_with_flow as compare_with_flow
from .tracking import eos_equilibrium_start as eos_equilibrium_start
from .tracking import ire_equilibrium_start as ire_equilibrium_start
