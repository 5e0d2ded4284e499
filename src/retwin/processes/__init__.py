"""SimPy processes: the discrete events of a run (material moves only in kernels).

Each process wakes at its event time, asks the chain to advance the flow up to that day
(``chain.advance_to``), then changes the state: the economy sets the month's prices, demand
and production (markets on), a what-if change starts or ends. What does not depend on the
state is no process: outages are drawn when a run starts (:func:`draw_outages`) into a
calendar the flow kernel reads day by day, the quota years and batch releases are a calendar
compiled with the scenario, and with markets off the price and demand paths
(:func:`reference_paths`, :func:`demand_paths`) are drawn when a run starts and replayed by
the kernel month by month.
"""

from retwin.processes.base import Chain, EventLog, OutageCalendar, draw_outages
from retwin.processes.economy import EconomyProcess, demand_paths, reference_paths
from retwin.processes.policy import PolicyProcess

__all__ = [
    "Chain",
    "EconomyProcess",
    "EventLog",
    "OutageCalendar",
    "PolicyProcess",
    "demand_paths",
    "draw_outages",
    "reference_paths",
]
