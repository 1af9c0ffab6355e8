"""The GD engine: a pure step (method), a sharpness tracker, a recorder and one driver.

* methods (subclasses of :class:`AbstractMethod`): :class:`GDWD` (GD with weight decay),
  :class:`Optax` (any optax optimizer);
* trackers (subclasses of :class:`AbstractTracker`): :class:`NoTracking`, :class:`RitzTracker`,
  :class:`RayleighTracker`,
  :class:`LanczosTracker`, :class:`RowStrideTracker` (a tracker's solves on a coarser grid of
  steps after a dense start);
* recording: :class:`SaveAt`;
* drivers: :func:`run` (one run: chunks, progress, checkpoints, non-finite handling) and
  :func:`run_batch` (many configurations, one program per device).

:func:`theory.gd_wd`, :func:`theory.engine.sweep.gd_wd_sweep` and :func:`theory.run_optimizer` are
thin front ends over these and return one family of results (:class:`GDResult`,
:class:`SweepResult`).
"""

from theory.engine.adaptive import AdaptiveSpec as AdaptiveSpec
from theory.engine.adaptive import PreconditionedTracker as PreconditionedTracker
from theory.engine.adaptive import StepGeometry as StepGeometry
from theory.engine.adaptive import adam_method as adam_method
from theory.engine.core import SaveAt as SaveAt
from theory.engine.core import State as State
from theory.engine.driver import run as run
from theory.engine.driver import run_batch as run_batch
from theory.engine.fast import RayleighState as RayleighState
from theory.engine.fast import RayleighTracker as RayleighTracker
from theory.engine.fast import RitzState as RitzState
from theory.engine.fast import RitzTracker as RitzTracker
from theory.engine.methods import GDWD as GDWD
from theory.engine.methods import AbstractMethod as AbstractMethod
from theory.engine.methods import Optax as Optax
from theory.engine.methods import optax_method as optax_method
from theory.engine.methods import tangent_kick as tangent_kick
from theory.engine.results import DivergenceError as DivergenceError
from theory.engine.results import GDResult as GDResult
from theory.engine.results import GDSnapshot as GDSnapshot
from theory.engine.results import SweepResult as SweepResult
from theory.engine.sgd import SGD as SGD
from theory.engine.sgd import angular_equilibrium as angular_equilibrium
from theory.engine.sgd import sgd_edge as sgd_edge
from theory.engine.sgd import sgd_wd as sgd_wd
from theory.engine.spectral import AbstractAddOn as AbstractAddOn
from theory.engine.spectral import Composite as Composite
from theory.engine.spectral import GroupSharpness as GroupSharpness
from theory.engine.spectral import SLQTracker as SLQTracker
from theory.engine.spectral import StepDiagnostics as StepDiagnostics
from theory.engine.spectral import with_extras as with_extras
from theory.engine.stochastic import StochasticTracker as StochasticTracker
from theory.engine.stride import RowStrideTracker as RowStrideTracker
from theory.engine.trackers import AbstractTracker as AbstractTracker
from theory.engine.trackers import LanczosTracker as LanczosTracker
from theory.engine.trackers import NoTracking as NoTracking
from theory.engine.trackers import Obs as Obs
from theory.engine.trackers import StepContext as StepContext
