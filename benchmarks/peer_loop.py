"""The peer chain (``peer_chain.yaml``) as a hand-written Numba loop: the yardstick of the
engine benchmarks (shared/reference/peers.md §4, "a Numba daily kernel for the same chain").

Five stages push downstream with back-pressure: each day a stage makes as much as its
capacity, its input stock and the room left in its output store (stock plus what is on the
way to it) allow; what it makes arrives after the stage's lead time; demand draws from the
last store. Arrays only, no allocation inside the loop.
"""

from __future__ import annotations

import numba
import numpy as np

from retwin._typing import FloatArray, IntArray

#: The peer chain's numbers (as in peer_chain.yaml): daily capacities, lead times (days)
#: from each stage to its output store, the stores' ceilings.
CAPACITY = np.array([160.0, 150.0, 140.0, 130.0, 120.0])
LEAD = np.array([3, 2, 2, 1, 0], dtype=np.int64)
STORE_MAX = np.array([5000.0, 4000.0, 4000.0, 3000.0, 3000.0])
DAYS = 3653  # 2024-01-01 .. 2033-12-31


@numba.njit(cache=True, nogil=True)
def chain_loop(demand: FloatArray, cap: FloatArray, lead: IntArray, store_max: FloatArray,
               stock: FloatArray, pipe: FloatArray, made: FloatArray) -> float:
    """Run the chain over ``len(demand)`` days; ``stock`` (S,) and ``pipe`` (S, L) are the
    state (updated in place), ``made`` (S,) adds up each stage's output. Returns the demand
    served. Stage ``s`` draws from store ``s - 1`` (stage 0 from the ground) and delivers to
    store ``s``; ``pipe[s, (d + lead) % L]`` holds what arrives in store ``s`` on day ``d +
    lead``."""
    n_s = cap.shape[0]
    n_l = pipe.shape[1]
    served = 0.0
    on_way = np.zeros(n_s)
    for s in range(n_s):
        for k in range(n_l):
            on_way[s] += pipe[s, k]
    for d in range(demand.shape[0]):
        slot = d % n_l
        for s in range(n_s):  # today's arrivals
            stock[s] += pipe[s, slot]
            on_way[s] -= pipe[s, slot]
            pipe[s, slot] = 0.0
        for s in range(n_s - 1, -1, -1):  # downstream first: a stage frees room upstream
            q = cap[s]
            room = store_max[s] - stock[s] - on_way[s]
            q = min(q, max(room, 0.0))
            if s > 0:
                q = min(q, stock[s - 1])
                stock[s - 1] -= q
            made[s] += q
            if lead[s] == 0:
                stock[s] += q
            else:
                pipe[s, (d + lead[s]) % n_l] += q
                on_way[s] += q
        take = min(demand[d], stock[n_s - 1])
        stock[n_s - 1] -= take
        served += take
    return served


def demand(days: int = DAYS, seed: int = 1) -> FloatArray:
    """N(100, 30) a day, rounded, at least 1 (the peers' demand)."""
    rng = np.random.default_rng(seed)
    return np.maximum(np.rint(rng.normal(100.0, 30.0, days)), 1.0)


def run(dem: FloatArray) -> tuple[float, FloatArray, FloatArray]:
    """The whole horizon from empty stores: demand served, end stocks, output per stage."""
    n_s = len(CAPACITY)
    stock = np.zeros(n_s)
    pipe = np.zeros((n_s, int(LEAD.max()) + 1))
    made = np.zeros(n_s)
    served = chain_loop(dem, CAPACITY, LEAD, STORE_MAX, stock, pipe, made)
    return served, stock, made
