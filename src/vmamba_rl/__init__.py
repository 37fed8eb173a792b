"""vmamba-rl: VMamba-TD3 and HOPE-style SAC for vision- and sensor-based navigation."""

import os as _os

# numba's default threading layer here is OpenMP, whose idle worker threads spin-wait; between two numba
# kernels they starve torch's own OpenMP pool (measured: a tiny TD3 update went from 0.17 s to 2.3 s).
# The workqueue layer parks its threads instead. Must be set before numba first runs a parallel kernel;
# a user's explicit NUMBA_THREADING_LAYER wins.
_os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

from vmamba_rl import envs as envs  # noqa: E402  (registers DroneNav-v0, Parking-v0, AirSimEnv-v42)

__version__ = "0.1.0"
