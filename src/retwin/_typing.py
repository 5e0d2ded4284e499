"""Array aliases and the axis conventions used across the package.

Axis order is fixed everywhere:

* plants ``P``, materials ``M``, pools ``S`` (one per region and material), markets ``K``,
  demand segments ``G``, quotas ``Q``, elements ``E`` (see :data:`retwin.scenario.ELEMENTS`);
* time is the last axis: days ``D`` or months ``T``.

Element quantities are oxide-equivalent tonnes (t REO), the industry's accounting basis;
a tonne of metal carries ``1 / metal_per_oxide`` t REO.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Int8Array = NDArray[np.int8]
BoolArray = NDArray[np.bool_]
