"""Engine tunables. Environment variables ``RETWIN_<NAME>`` override the defaults."""

from __future__ import annotations

import os

#: Relative tolerance of the mass-balance check, scaled by the largest flow of the run.
MASS_BALANCE_RTOL: float = float(os.environ.get("RETWIN_MASS_BALANCE_RTOL", "1e-9"))

#: Whether compiled kernels are cached on disk between processes.
NUMBA_CACHE: bool = os.environ.get("RETWIN_NUMBA_CACHE", "1") not in ("0", "false", "no")

#: Whether runs take the flow kernel compiled for their chain's structure when one has been
#: compiled (``retwin warmup``); off, every run takes the general kernel (the same numbers).
CHAIN_KERNELS: bool = os.environ.get("RETWIN_CHAIN_KERNELS", "1") not in ("0", "false", "no")

#: Hard limits on what one run may ask for (protects batch workers and the service).
MAX_HORIZON_DAYS: int = int(os.environ.get("RETWIN_MAX_HORIZON_DAYS", str(366 * 40)))
MAX_REPLICATIONS: int = int(os.environ.get("RETWIN_MAX_REPLICATIONS", "10000"))
