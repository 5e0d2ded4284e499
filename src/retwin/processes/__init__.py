"""SimPy processes: the discrete events of a run (material moves only in kernels).

Each process wakes at its event time, asks the chain to advance the flow up to that day
(``chain.advance_to``), then changes the state: a quota batch is released, the economy
sets the month's prices, demand and production (markets on), a what-if change starts or
ends. What does not depend on the state is no process: outages are drawn when a run starts
(:func:`draw_outages`) into a calendar the flow kernel reads day by day, and with markets off
so are the price and demand paths (:func:`reference_paths`, :func:`demand_paths`), which the
kernel replays month by month.
"""

from retwin.processes.base import Chain, EventLog, OutageCalendar, draw_outages
from retwin.processes.economy import EconomyProcess, demand_paths, reference_paths
from retwin.processes.policy import PolicyProcess
from retwin.processes.quota import QuotaProcess

__all__ = [
    "Chain",
    "EconomyProcess",
    "EventLog",
    "OutageCalendar",
    "PolicyProcess",
    "QuotaProcess",
    "demand_paths",
    "draw_outages",
    "reference_paths",
]
