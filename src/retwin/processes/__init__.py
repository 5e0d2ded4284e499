"""SimPy processes: the discrete events of a run (material moves only in kernels).

Each process wakes at its event time, asks the chain to advance the flow up to that day
(``chain.advance_to``), then changes the state: a quota batch is released, prices and
demand are redrawn for the month, a what-if change starts or ends. Outages, whose times do
not depend on the state, are no processes: they are drawn when a run starts
(:func:`draw_outages`) into a calendar the flow kernel reads day by day.
"""

from retwin.processes.base import Chain, OutageCalendar, draw_outages
from retwin.processes.economy import EconomyProcess
from retwin.processes.market import DemandProcess, MarketProcess
from retwin.processes.policy import PolicyProcess
from retwin.processes.quota import QuotaProcess

__all__ = [
    "Chain",
    "DemandProcess",
    "EconomyProcess",
    "MarketProcess",
    "OutageCalendar",
    "PolicyProcess",
    "QuotaProcess",
    "draw_outages",
]
