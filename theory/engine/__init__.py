"""The GD engine: a pure step (method), a sharpness tracker, a recorder and one driver.

* methods (subclasses of :class:`AbstractMethod`): :class:`GDWD` (GD with weight decay),
  :class:`Optax` (any optax optimizer);
* trackers (subclasses of :class:`AbstractTracker`): :class:`NoTracking`, :class:`RitzTracker`,
  :class:`LanczosTracker`;
* recording: :class:`SaveAt`;
* drivers: :func:`run` (one run: chunks, progress, checkpoints, non-finite handling) and
  :func:`run_batch` (many configurations, one program per device).

:func:`theory.gd_wd`, :func:`theory.engine.sweep.gd_wd_sweep` and :func:`theory.run_optimizer` are
thin front ends over these and return one family of results (:class:`GDResult`,
:class:`SweepResult`).
"""

from theory.engine.core import SaveAt as SaveAt
from theory.engine.core import State as State
from theory.engine.driver import run as run
from theory.engine.driver import run_batch as run_batch
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
from theory.engine.trackers import AbstractTracker as AbstractTracker
from theory.engine.trackers import LanczosTracker as LanczosTracker
from theory.engine.trackers import NoTracking as NoTracking
from theory.engine.trackers import Obs as Obs
from theory.engine.trackers import StepContext as StepContext
