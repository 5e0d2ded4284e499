"""The month's trade caps, set from the outside curves (markets on), in one compiled call.

The market process sets the outside curves every month; the engine turns them into the
daily caps the flow kernel reads. As numpy calls that was a dozen dispatches on arrays of a
few dozen markets; here it is one, with numpy's arithmetic (``np.maximum``/``np.minimum``
propagate NaN; a product, then a division by 365), so the caps are the same bit for bit.
"""

from __future__ import annotations

from retwin._typing import FloatArray
from retwin.kernels._jit import jit

__all__ = [
    "BASE_EXPORT",
    "BASE_IMPORT",
    "CONTRACT",
    "EXPORT_DEMAND",
    "IMPORT_SHARE",
    "decide",
    "hand_over",
    "set_caps",
]

#: Rows of the engine's ``(5, K)`` trade state: the caps after trade changes (t a year), the
#: share of the import cap on offer, the outside demand for exports (at least the contract)
#: and the exports under contract (t a year).
BASE_IMPORT, BASE_EXPORT, IMPORT_SHARE, EXPORT_DEMAND, CONTRACT = range(5)


@jit
def _set_caps(import_share: FloatArray, export_demand_tpa: FloatArray,
              export_contract_tpa: FloatArray, trade: FloatArray, imp_cap_day: FloatArray,
              exp_cap_day: FloatArray, exp_contract_day: FloatArray) -> None:
    for k in range(trade.shape[1]):
        demand, contract = export_demand_tpa[k], export_contract_tpa[k]
        trade[IMPORT_SHARE, k] = import_share[k]
        # np.maximum / np.minimum: the first if it is larger (smaller) or NaN, else the
        # second (so a NaN in either propagates, and of two equal zeros the second is kept)
        trade[EXPORT_DEMAND, k] = demand if (demand > contract or demand != demand) \
            else contract
        trade[CONTRACT, k] = contract
        imp_cap_day[k] = trade[BASE_IMPORT, k] * trade[IMPORT_SHARE, k] / 365.0
        base = trade[BASE_EXPORT, k]
        demand = trade[EXPORT_DEMAND, k]
        exp_cap_day[k] = (base if (base < demand or base != base) else demand) / 365.0
        exp_contract_day[k] = (base if (base < contract or base != base) else contract) \
            / 365.0


def set_caps(import_share: FloatArray, export_demand_tpa: FloatArray,
             export_contract_tpa: FloatArray, trade: FloatArray, imp_cap_day: FloatArray,
             exp_cap_day: FloatArray, exp_contract_day: FloatArray) -> None:
    """Take this month's outside curves (each ``(K,)``: the share of the import cap on offer,
    the outside demand for exports and the exports under contract, t a year) into ``trade``
    (``(5, K)``, rows as above; the demand kept is at least the contract), and set the daily
    caps: imports ``base x share / 365``, exports ``min(base, demand) / 365`` and contracted
    exports ``min(base, contract) / 365``. Arrays float64 and contiguous (not checked: the
    engine's own, every month)."""
    _set_caps(import_share, export_demand_tpa, export_contract_tpa, trade, imp_cap_day,
              exp_cap_day, exp_contract_day)


@jit
def _decide(share: FloatArray, want: FloatArray, decision: FloatArray, want_day: FloatArray,
            cap_max_day: FloatArray, cap_day: FloatArray) -> None:
    for p in range(decision.shape[0]):
        decision[p] = share[p]
        want_day[p] = want[p]
        cap_day[p] = cap_max_day[p] * decision[p]


def decide(share: FloatArray, want: FloatArray, decision: FloatArray, want_day: FloatArray,
           cap_max_day: FloatArray, cap_day: FloatArray) -> None:
    """The producers' decided share of their ceiling and the rate a plant running flat out
    was asked for (``share``, ``want``, each ``(P,)``) into ``decision`` and ``want_day``, and
    each plant's capacity ``cap_day = cap_max_day x decision``."""
    _decide(share, want, decision, want_day, cap_max_day, cap_day)


@jit
def _hand_over(decide: bool, share: FloatArray, want: FloatArray, decision: FloatArray,
               want_day: FloatArray, cap_max_day: FloatArray, cap_day: FloatArray,
               import_share: FloatArray, export_demand_tpa: FloatArray,
               export_contract_tpa: FloatArray, trade: FloatArray, imp_cap_day: FloatArray,
               exp_cap_day: FloatArray, exp_contract_day: FloatArray, exp_asked: FloatArray,
               days: float) -> None:
    if decide:
        _decide(share, want, decision, want_day, cap_max_day, cap_day)
    _set_caps(import_share, export_demand_tpa, export_contract_tpa, trade, imp_cap_day,
              exp_cap_day, exp_contract_day)
    for k in range(exp_asked.shape[0]):
        exp_asked[k] = exp_cap_day[k] * days


def hand_over(decide: bool, share: FloatArray, want: FloatArray, decision: FloatArray,
              want_day: FloatArray, cap_max_day: FloatArray, cap_day: FloatArray,
              import_share: FloatArray, export_demand_tpa: FloatArray,
              export_contract_tpa: FloatArray, trade: FloatArray, imp_cap_day: FloatArray,
              exp_cap_day: FloatArray, exp_contract_day: FloatArray, exp_asked: FloatArray,
              days: int) -> None:
    """A month's decisions and outside curves handed to the flow, in one call: when
    ``decide``, :func:`decide`; then :func:`set_caps`; then what outside
    buyers ask over the month's ``days`` at the caps (``exp_asked`` = ``exp_cap_day x days``).
    The same arithmetic as numpy's, bit for bit."""
    _hand_over(decide, share, want, decision, want_day, cap_max_day, cap_day, import_share,
               export_demand_tpa, export_contract_tpa, trade, imp_cap_day, exp_cap_day,
               exp_contract_day, exp_asked, float(days))
