"""The flow kernel compiled for one chain's structure (:mod:`retwin.kernels.specialised`):
the same numbers as the general kernel, bit for bit; one kernel per structure, shared by the
chain's what-ifs that change numbers only; never compiled on a run's path; kept on disk for
the next process."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numba
import pytest

import retwin
from conftest import assert_same_run
from retwin.compiled import Compiled
from retwin.engine import model as engine_model
from retwin.kernels import flow, specialised
from retwin.kernels.flow import BIND_QUOTA, BIND_STORAGE, advance_packed

JIT = not numba.config.DISABLE_JIT


@pytest.fixture(scope="module")
def tiny_chain(tiny: retwin.Scenario) -> Compiled:
    """tiny, with its chain kernel compiled (and marked in the on-disk cache)."""
    c = retwin.prepare(tiny)
    engine_model.specialise_chain(c)
    return c


@pytest.fixture(scope="module")
def tiny_markets_chain() -> Compiled:
    """tiny-markets (tiny with two more outside markets), with its chain kernel compiled."""
    c = retwin.prepare(retwin.load_scenario("tiny-markets"))
    engine_model.specialise_chain(c)
    return c


@pytest.fixture
def own_marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Marks of compiled chain kernels in a folder of this test's, and this process's
    kernels forgotten: what was compiled before (another test, another session) is not
    seen as compiled (Numba's own cache still spares compiling it twice)."""
    monkeypatch.setattr(specialised, "_mark", lambda key: tmp_path / f"{key}.ready")
    monkeypatch.setattr(specialised, "_KERNELS", {})
    monkeypatch.setattr(specialised, "_ABSENT", set())
    yield


def _runs(c: Compiled, monkeypatch: pytest.MonkeyPatch, seeds: range = range(3)
          ) -> tuple[list[retwin.RunResult], list[retwin.RunResult]]:
    """Runs of ``c`` with the chain kernel, then the same runs with the general kernel."""
    out = []
    for on in (True, False):
        monkeypatch.setattr(engine_model, "CHAIN_KERNELS", on)
        kernel = engine_model.ChainModel(c, 0)._advance
        assert (kernel is not advance_packed) == on
        out.append([retwin.run(c, seed=s) for s in seeds])
    return out[0], out[1]


@pytest.mark.parametrize("name", ["tiny_chain", "tiny_markets_chain"])
def test_a_chain_kernel_gives_the_general_kernels_numbers_bit_for_bit(
        name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    c = request.getfixturevalue(name)
    assert engine_model.chain_kernel(c) is not None
    chain, general = _runs(c, monkeypatch)
    for a, b in zip(chain, general, strict=True):
        assert_same_run(a, b)
        assert a.balance.closes
    assert chain[0].activity.sum() > 0
    assert not (chain[0].activity == chain[1].activity).all()  # the seeds differ


PEER_CHAIN = Path(__file__).parents[1] / "benchmarks" / "peer_chain.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["baotou-2024", str(PEER_CHAIN)])
def test_a_chain_kernel_gives_the_general_kernels_numbers_on_the_larger_chains(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference model (quotas shared by licence, pools shared within a level, storage
    ceilings, trade, timed events) and the peers' chain (every store with a ceiling, lead
    times on every stage): bit for bit, a run and a what-if on its kernel."""
    c = retwin.prepare(retwin.load_scenario(name))
    assert "lv" not in _loops_kept(c)  # its plant pass unrolled
    engine_model.specialise_chain(c)  # (from the on-disk cache after `retwin warmup`)
    factor = {"kind": "quota", "quota": "mining", "factor": 0.6} if name == "baotou-2024" else \
        {"kind": "demand", "segment": "customers", "factor": 1.4}
    whatif = retwin.prepare(retwin.load_scenario(name), [factor])
    for compiled in (c, whatif):
        chain, general = _runs(compiled, monkeypatch, range(2))
        for a, b in zip(chain, general, strict=True):
            assert_same_run(a, b)
            assert a.balance.closes
    codes = chain[0].binding
    assert (codes == BIND_STORAGE).any() or name == "baotou-2024"
    assert (codes == BIND_QUOTA).any() or name != "baotou-2024"


def _loops_kept(c: Compiled) -> list[str]:
    """The targets of the loops the chain's kernel keeps (not unrolled)."""
    constants = specialised.chain_constants(c.kernel_static, c.kernel_sizes)
    tree = specialised.unrolled(Path(flow._FILENAME).read_text(encoding="utf-8"), "_k",
                                constants, c.kernel_sizes)
    return [ast.unparse(n.target) for n in ast.walk(tree) if isinstance(n, ast.For)]


@pytest.mark.slow
def test_a_chain_too_large_to_unroll_keeps_its_loops_and_its_numbers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Unrolled, a chain of 60 plants would take a minute to compile (and larger ones fail
    in the compiler): its kernel keeps the plant pass as loops, the structure still put in,
    and gives the general kernel's numbers."""
    spec = importlib.util.spec_from_file_location(
        "synthetic", Path(__file__).parents[1] / "benchmarks" / "synthetic.py")
    assert spec is not None and spec.loader is not None
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)
    c = retwin.prepare(synthetic.chain(60, 1))
    assert "lv" in _loops_kept(c)
    engine_model.specialise_chain(c)
    chain, general = _runs(c, monkeypatch, range(1))
    assert_same_run(chain[0], general[0])
    assert chain[0].balance.closes and chain[0].activity.sum() > 0


def test_a_storage_ceiling_is_part_of_a_chains_structure(
        tiny: retwin.Scenario, own_marks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where storage can bind decides the kernel's plan, which a chain's kernel has compiled
    in: a ceiling on a pool makes another chain, with its own kernel (the ceiling's height
    does not), and its runs give the general kernel's numbers."""
    def ceiled(max_t: float) -> Compiled:
        return retwin.prepare(tiny, [{"kind": "parameter", "path": "pools.baotou/magnet.max_t",
                                      "value": max_t}])

    key = engine_model._structure_key
    low, high = ceiled(150.0), ceiled(400.0)
    assert key(low) == key(high) != key(retwin.prepare(tiny))
    engine_model.specialise_chain(low)
    chain, general = _runs(high, monkeypatch, range(2))
    for a, b in zip(chain, general, strict=True):
        assert_same_run(a, b)
    assert (chain[0].binding == BIND_STORAGE).any()


def test_another_structure_gets_its_own_kernel_only_once_compiled(
        tiny: retwin.Scenario, own_marks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def changed(path: str, value: float) -> Compiled:
        return retwin.prepare(tiny, [{"kind": "parameter", "path": path, "value": value}])

    bigger = changed("plants.separation.capacity_tpa", 4000.0)
    slower = changed("plants.separation.lead_time_days", 45)
    key = engine_model._structure_key
    assert key(bigger) == key(retwin.prepare(tiny)) != key(slower)

    # nothing compiled for it: its runs take the general kernel; a run compiles nothing
    assert engine_model.chain_kernel(slower) is None
    assert engine_model.ChainModel(slower, 0)._advance is advance_packed
    general = retwin.run(slower, seed=4)
    assert engine_model.chain_kernel(slower) is None

    kernel = engine_model.specialise_chain(slower)
    assert engine_model.chain_kernel(slower) is kernel
    assert engine_model.ChainModel(slower, 0)._advance is kernel
    assert engine_model.chain_kernel(bigger) is None  # tiny's kernel is another one
    assert_same_run(retwin.run(slower, seed=4), general)
    # and the lead time is in the kernel: tiny's own runs differ
    assert not (retwin.run(retwin.prepare(tiny), seed=4).activity
                == general.activity).all()


def test_the_chains_found_without_a_kernel_are_remembered_within_a_bound(
        tiny: retwin.Scenario, own_marks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service sees a new structure with each new-plant what-if: the keys it found no
    kernel for are kept up to a bound, then forgotten (and looked up again)."""
    monkeypatch.setattr(specialised, "_ABSENT_MAX", 2)
    c = retwin.prepare(tiny)
    for key in ("a" * 32, "b" * 32, "c" * 32):
        assert specialised.kernel_for(key, c.kernel_static, c.kernel_sizes) is None
        assert key in specialised._ABSENT and len(specialised._ABSENT) <= 2
    assert "a" * 32 not in specialised._ABSENT


def test_chain_kernels_can_be_turned_off(tiny_chain: Compiled,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_model, "CHAIN_KERNELS", False)
    assert engine_model.chain_kernel(tiny_chain) is None
    assert engine_model.ChainModel(tiny_chain, 0)._advance is advance_packed


@pytest.mark.skipif(not JIT, reason="compiled kernels only (NUMBA_DISABLE_JIT=1)")
def test_a_mark_is_taken_only_while_the_kernel_file_is_as_it_was(
        tiny_chain: Compiled, own_marks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark holds the kernel file's time and size, which Numba's cache checks: a file
    touched since would have the kernel compiled again on a run's path; the run takes the
    general kernel instead."""
    engine_model.specialise_chain(tiny_chain)  # (from Numba's cache: the fixture compiled it)

    def from_disk() -> object:
        monkeypatch.setattr(specialised, "_KERNELS", {})
        monkeypatch.setattr(specialised, "_ABSENT", set())
        return engine_model.chain_kernel(tiny_chain)

    assert from_disk() is not None
    monkeypatch.setattr(specialised, "_stamp", lambda: b"1764633600.0 34000")
    assert from_disk() is None


@pytest.mark.skipif(not JIT, reason="compiled kernels only (NUMBA_DISABLE_JIT=1)")
def test_the_next_process_loads_a_compiled_chain_kernel(tiny_chain: Compiled) -> None:
    """Compiled once (``retwin warmup``, here the fixture), a chain's kernel is loaded from
    the on-disk cache by the next process's first run: nothing is compiled again."""
    code = (
        "import retwin\n"
        "from retwin.engine import model\n"
        "c = retwin.prepare(retwin.load_scenario('tiny'))\n"
        "kernel = model.chain_kernel(c)\n"
        "assert kernel is not None\n"
        "assert retwin.run(c, seed=1).balance.closes\n"
        "print(len(kernel.stats.cache_hits), len(kernel.stats.cache_misses))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "0"]
