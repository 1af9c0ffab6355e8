"""The GD engine: a pure step (method), a sharpness tracker, a recorder and one driver.

* methods: :class:`GDWD` (GD with weight decay), :class:`Optax` (any optax optimizer);
* trackers: :class:`NoTracking`, :class:`LanczosTracker`;
* recording: :class:`SaveAt`;
* drivers: :func:`run` (one run: chunks, progress, checkpoints, non-finite handling) and
  :func:`run_batch` (many configurations, one program per device).

:func:`theory.gd_wd`, :func:`theory.sweep.gd_wd_sweep` and :func:`theory.run_optimizer` are
thin front ends over these and return one family of results (:class:`GDResult`).
"""

from .core import SaveAt as SaveAt
from .core import State as State
from .driver import run as run
from .driver import run_batch as run_batch
from .methods import GDWD as GDWD
from .methods import Optax as Optax
from .methods import optax_method as optax_method
from .methods import tangent_kick as tangent_kick
from .results import DivergenceError as DivergenceError
from .results import GDResult as GDResult
from .results import GDSnapshot as GDSnapshot
from .trackers import LanczosTracker as LanczosTracker
from .trackers import NoTracking as NoTracking
from .trackers import Obs as Obs
