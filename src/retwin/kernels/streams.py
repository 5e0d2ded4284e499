"""The seed of a named random stream: numpy's ``SeedSequence`` hash, compiled.

A run takes one generator per named stream (outages per plant, price noise per material,
demand noise per segment), seeded ``SeedSequence(seed, spawn_key=(key,))``. Building that
seed sequence in numpy costs more than drawing the stream's numbers; this is its hash (the
mixing of the entropy into the pool, then the words a ``PCG64`` asks of it), the same
arithmetic on 32-bit words (numpy ``bit_generator.pyx``, after M. E. O'Neill's
``seed_seq_fe``), so the streams are numpy's own bit for bit (checked in the tests).
"""

from __future__ import annotations

import numpy as np

from retwin._typing import IntArray
from retwin.kernels._jit import jit

__all__ = ["POOL_SIZE", "entropy_words", "generate_state"]

#: numpy's ``SeedSequence`` constants.
POOL_SIZE = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = 16
_MASK = 0xFFFFFFFF


def entropy_words(n: int) -> list[int]:
    """A non-negative int as numpy's ``SeedSequence`` reads it: 32-bit words, least
    significant first (``[0]`` for 0)."""
    if n < 0:
        raise ValueError(f"seed(={n}) must be >= 0")
    words = [n & _MASK]
    n >>= 32
    while n:
        words.append(n & _MASK)
        n >>= 32
    return words


# The words are kept below 2**32 and every product is masked to 32 bits: compiled, products
# wrap in 64 bits (their low 32 bits are right); as Python (the JIT off), int() makes them
# Python ints, which do not overflow.


@jit
def _hashmix(value: int, hash_const: IntArray) -> int:
    value = (int(value) ^ int(hash_const[0])) & _MASK
    h = (int(hash_const[0]) * _MULT_A) & _MASK
    hash_const[0] = h
    value = (value * h) & _MASK
    return value ^ (value >> _XSHIFT)


@jit
def _mix(x: int, y: int) -> int:
    result = (_MIX_MULT_L * int(x) - _MIX_MULT_R * int(y)) & _MASK
    return result ^ (result >> _XSHIFT)


@jit
def _pool(seed_words: IntArray, key: int) -> IntArray:
    """The mixed pool of ``SeedSequence(seed, spawn_key=(key,))``: the seed's words (padded
    to the pool size), then the key's one word."""
    n = max(seed_words.shape[0], POOL_SIZE) + 1
    entropy = np.zeros(n, np.int64)
    entropy[:seed_words.shape[0]] = seed_words
    entropy[n - 1] = key
    hash_const = np.full(1, _INIT_A, np.int64)
    mixer = np.zeros(POOL_SIZE, np.int64)
    for i in range(POOL_SIZE):
        mixer[i] = _hashmix(entropy[i], hash_const)
    for i_src in range(POOL_SIZE):
        for i_dst in range(POOL_SIZE):
            if i_src != i_dst:
                mixer[i_dst] = _mix(mixer[i_dst], _hashmix(mixer[i_src], hash_const))
    for i_src in range(POOL_SIZE, n):
        for i_dst in range(POOL_SIZE):
            mixer[i_dst] = _mix(mixer[i_dst], _hashmix(entropy[i_src], hash_const))
    return mixer


@jit
def _generate(seed_words: IntArray, key: int, out: IntArray) -> None:
    """``generate_state(len(out), np.uint32)``, as int64."""
    mixer = _pool(seed_words, key)
    h = _INIT_B
    for i in range(out.shape[0]):
        value = (int(mixer[i % POOL_SIZE]) ^ h) & _MASK
        h = (h * _MULT_B) & _MASK
        value = (value * h) & _MASK
        out[i] = value ^ (value >> _XSHIFT)


@jit
def _generate64(seed_words: IntArray, key: int, out: np.ndarray) -> None:
    """``generate_state(len(out), np.uint64)``: the 32-bit words in little-endian pairs."""
    words = np.zeros(2 * out.shape[0], np.int64)
    _generate(seed_words, key, words)
    for i in range(out.shape[0]):
        out[i] = np.uint64(words[2 * i]) | (np.uint64(words[2 * i + 1]) << np.uint64(32))


def generate_state(seed_words: IntArray, key: int, n_words: int, dtype: type = np.uint32
                   ) -> np.ndarray:
    """What ``np.random.SeedSequence(seed, spawn_key=(key,)).generate_state(n_words, dtype)``
    returns, for ``seed_words`` the seed's :func:`entropy_words` (int64) and a 32-bit ``key``.
    """
    if not 0 <= key <= _MASK:
        raise ValueError(f"key(={key}) must be in 0..{_MASK}")
    if np.dtype(dtype) == np.dtype(np.uint64):
        out = np.empty(n_words, np.uint64)
        _generate64(seed_words, int(key), out)
        return out
    if np.dtype(dtype) == np.dtype(np.uint32):
        words = np.empty(n_words, np.int64)
        _generate(seed_words, int(key), words)
        return words.astype(np.uint32)
    raise ValueError(f"dtype(={np.dtype(dtype)}) must be uint32 or uint64")
