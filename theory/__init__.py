"""Pure mathematics of the sharpness-reduction simulator (no I/O, no plotting, no CLI).

Public surface (stable): :func:`spherical_sharpness`, :func:`gd_wd` and :func:`gd_wd_sweep`
with the engine's parts (:class:`SaveAt`, :class:`LanczosTracker`, :class:`NoTracking`,
:class:`GDWD`, :class:`Optax`, :func:`run`, :func:`run_batch`; docs/engine.md),
:func:`project_to_manifold`, :func:`sharpness_flow`, :func:`central_flow`, :func:`edge_flow`,
:func:`predict_from_init`, :func:`cluster_flow`, :func:`classify_regime` and the helpers below.
Everything works on flat parameter vectors ``w`` of shape ``(D,)``; see docs/theory.md for the
definitions and docs/conventions.md for the conventions.
"""

from theory.analysis.regimes import RegimeCriteria as RegimeCriteria
from theory.analysis.regimes import RegimeResult as RegimeResult
from theory.analysis.regimes import classify_regime as classify_regime
from theory.core.curvature import grad_and_hvp as grad_and_hvp
from theory.core.curvature import grad_lambda1 as grad_lambda1
from theory.core.curvature import hvp as hvp
from theory.core.curvature import linearize_grad as linearize_grad
from theory.core.curvature import mixed_third as mixed_third
from theory.core.errors import DegenerateSharpnessError as DegenerateSharpnessError
from theory.core.errors import DegenerateSharpnessWarning as DegenerateSharpnessWarning
from theory.core.errors import ProjectionError as ProjectionError
from theory.core.invariance import ScaleInvarianceError as ScaleInvarianceError
from theory.core.invariance import ScaleInvariant as ScaleInvariant
from theory.core.invariance import check_scale_invariance as check_scale_invariance
from theory.core.invariance import flatten_loss as flatten_loss
from theory.core.invariance import make_scale_invariant as make_scale_invariant
from theory.core.invariance import normalize as normalize
from theory.core.lanczos import LanczosResult as LanczosResult
from theory.core.lanczos import lanczos as lanczos
from theory.core.sharpness import eos_quantity as eos_quantity
from theory.core.sharpness import sharpness_eigs as sharpness_eigs
from theory.core.sharpness import spherical_sharpness as spherical_sharpness
from theory.engine import GDWD as GDWD
from theory.engine import AbstractMethod as AbstractMethod
from theory.engine import AbstractTracker as AbstractTracker
from theory.engine import GDSnapshot as GDSnapshot
from theory.engine import LanczosTracker as LanczosTracker
from theory.engine import NoTracking as NoTracking
from theory.engine import Optax as Optax
from theory.engine import SaveAt as SaveAt
from theory.engine import SweepResult as SweepResult
from theory.engine import optax_method as optax_method
from theory.engine import run as run
from theory.engine import run_batch as run_batch
from theory.engine.gd import DivergenceError as DivergenceError
from theory.engine.gd import GDResult as GDResult
from theory.engine.gd import gd_wd as gd_wd
from theory.engine.gd import predicted_eos_onset as predicted_eos_onset
from theory.engine.sweep import gd_wd_sweep as gd_wd_sweep
from theory.flows.central import CentralFlowField as CentralFlowField
from theory.flows.central import CentralFlowResult as CentralFlowResult
from theory.flows.central import EdgeEvent as EdgeEvent
from theory.flows.central import EdgeSettings as EdgeSettings
from theory.flows.central import central_flow as central_flow
from theory.flows.central import equilibrium_on_gamma as equilibrium_on_gamma
from theory.flows.central import solve_sigma as solve_sigma
from theory.flows.cluster import ClusterFlowField as ClusterFlowField
from theory.flows.cluster import ClusterFlowResult as ClusterFlowResult
from theory.flows.cluster import Clustering as Clustering
from theory.flows.cluster import cluster_flow as cluster_flow
from theory.flows.common import RK4 as RK4
from theory.flows.common import AbstractGeometry as AbstractGeometry
from theory.flows.common import Dense as Dense
from theory.flows.common import FixedSteps as FixedSteps
from theory.flows.common import GaussNewton as GaussNewton
from theory.flows.common import Lanczos as Lanczos
from theory.flows.common import SaveTimes as SaveTimes
from theory.flows.compare import ComparisonResult as ComparisonResult
from theory.flows.compare import compare_with_flow as compare_with_flow
from theory.flows.compare import eos_equilibrium_start as eos_equilibrium_start
from theory.flows.compare import ire_equilibrium_start as ire_equilibrium_start
from theory.flows.edge import EdgeFlowField as EdgeFlowField
from theory.flows.edge import EdgeFlowResult as EdgeFlowResult
from theory.flows.edge import Oscillation as Oscillation
from theory.flows.edge import edge_flow as edge_flow
from theory.flows.gauss_newton import gauss_newton_project as gauss_newton_project
from theory.flows.gauss_newton import ls_tangent_projector as ls_tangent_projector
from theory.flows.manifold import project_to_manifold as project_to_manifold
from theory.flows.manifold import projection_info as projection_info
from theory.flows.manifold import tangent_projector as tangent_projector
from theory.flows.path import CentralPathResult as CentralPathResult
from theory.flows.path import PathChoice as PathChoice
from theory.flows.path import PathRule as PathRule
from theory.flows.path import central_path as central_path
from theory.flows.path import choose_path as choose_path
from theory.flows.predict import Phase1Model as Phase1Model
from theory.flows.predict import Phase3Flow as Phase3Flow
from theory.flows.predict import PredictResult as PredictResult
from theory.flows.predict import predict_from_init as predict_from_init
from theory.flows.predict import relaxation_cycle as relaxation_cycle
from theory.flows.reduction import Degeneracy as Degeneracy
from theory.flows.reduction import SharpnessFlowField as SharpnessFlowField
from theory.flows.reduction import SharpnessFlowResult as SharpnessFlowResult
from theory.flows.reduction import sharpness_flow as sharpness_flow
from theory.optim.ire import diagonal_mask as diagonal_mask
from theory.optim.ire import exact_flat as exact_flat
from theory.optim.ire import fisher_diagonal as fisher_diagonal
from theory.optim.ire import ire as ire
from theory.optim.transforms import gd_wd_transform as gd_wd_transform
from theory.optim.transforms import run_optimizer as run_optimizer
from theory.optim.transforms import sam as sam
from theory.problems.analytic import get_problem as get_problem
