"""Test setup, before jax is imported anywhere, and the session fixtures several files share.

- 8 fake CPU devices, for the sharding tests; the tiny configs run on one (m4m_fixtures.tiny_config).
- Compiling is most of the suite's time (hundreds of tiny eager-op programs per test, and the :tiny train steps
  that each `train()` call and entry-point subprocess re-jits), so: XLA's backend at -O0 (compiles ~1.5x faster;
  the tiny programs run no slower to matter) with the legacy CPU emitters and one codegen split (together the whole
  suite 17 -> 9 min, docs/RESULTS.md), and a persistent compilation cache in .cache/jax (gitignored) for
  programs that take >= 1 s to compile, shared by the xdist workers and the subprocesses (they inherit the
  environment). Not size-capped: with a cap jax rescans every entry under a lock on each write, which made the
  suite ~10x slower as the cache grew.
- XLA logs at ERROR and above reach the output (TF_CPP_MIN_LOG_LEVEL=2: INFO and WARNING stay quiet), so a fatal XLA
  error is not a bare "Aborted".
"""
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:  # set it in XLA_FLAGS to test optimised code
    _flags += " --xla_backend_optimization_level=0"
if "xla_cpu_use_fusion_emitters" not in _flags:  # the legacy CPU emitters compile the tiny test programs faster
    _flags += " --xla_cpu_use_fusion_emitters=false"
if "xla_cpu_parallel_codegen_split_count" not in _flags:  # one codegen unit: no split/link overhead per program
    _flags += " --xla_cpu_parallel_codegen_split_count=1"
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

# Session fixtures: defined once here, so each test process builds them once however many files use them.
from m4m_fixtures import prepared_dir  # noqa: E402,F401  (the prepared :tiny MIDI dataset)
from sps_fixtures import sps_tiny_root  # noqa: E402,F401  (a trained + evaluated SPS :tiny workdir)


# --- a crashed xdist worker ends the run now, naming the test -------------------------------------------------------
def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_StopOnCrashedWorker(), "stop-on-crashed-worker")


class _StopOnCrashedWorker:
    """Master side. A worker died (abort, segfault, SIGKILL, out of memory): with --max-worker-restart=0 (Makefile)
    xdist reports "worker gwN crashed while running <test>" and stops scheduling, but each other worker would first
    run every test already queued on it (minutes). Interrupt them (SIGINT, SIGKILL 30 s later): the run fails now."""

    def __init__(self):
        self.interrupted: dict[str, str] = {}  # worker id -> the id of the worker that crashed

    def pytest_testnodedown(self, node, error):
        if error is None or node.gateway.id in self.interrupted:
            return
        import signal
        import sys
        import threading

        print(f"\nconftest: worker {node.gateway.id} died ({error}); interrupting the other workers", file=sys.stderr)
        dsession = node.config.pluginmanager.getplugin("dsession")
        for other in getattr(dsession.sched, "nodes", []) if dsession and dsession.sched else []:
            popen = getattr(getattr(other.gateway, "_io", None), "popen", None)  # execnet's popen gateway
            if other is node or popen is None or popen.poll() is not None:
                continue
            self.interrupted[other.gateway.id] = node.gateway.id
            os.kill(popen.pid, signal.SIGINT)
            kill = threading.Timer(30, lambda p=popen: p.poll() is None and p.kill())
            kill.daemon = True  # the master does not wait for it to exit
            kill.start()

    def pytest_handlecrashitem(self, crashitem, report, sched):
        """A test cut short because another worker crashed says so (it did not crash itself)."""
        crashed = self.interrupted.get(report.node.gateway.id)
        if crashed:
            report.longrepr = f"interrupted: worker {crashed!r} crashed (see its report); {crashitem!r} did not finish"


# --- tiers: `make test-fast` runs -m 'not slow and not integration' --------------------------------------------------
# integration = trains, runs an entry point in a subprocess, or runs a notebook. A test is in it when it uses one of
# these fixtures (each trains a run) or carries the mark; in the fast tier a test that spawns a process or trains
# anyway fails, naming the mark, so the tier stays fast as tests are added.
INTEGRATION_FIXTURES = {"sps_tiny_root", "ball_root", "runs", "run4", "m4m_runs"}
_UNDO = pytest.StashKey()


# --dist loadgroup (Makefile): the tests sharing an expensive module or session fixture run on one worker, which
# builds it once; every other test goes to whichever worker is free (a slow file is no longer pinned to one).
MODULE_GROUP_FIXTURES = INTEGRATION_FIXTURES | {"analysis_dir", "data_dir", "lm_workdir"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if INTEGRATION_FIXTURES & used:
            item.add_marker(pytest.mark.integration)
        if "sps_tiny_root" in used:
            item.add_marker(pytest.mark.xdist_group("sps_tiny_root"))
        elif MODULE_GROUP_FIXTURES & used:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def _fast_tier(config) -> bool:
    return "not integration" in (config.getoption("markexpr", "") or "")


def pytest_runtest_setup(item):
    if not _fast_tier(item.config) or item.get_closest_marker("integration"):
        return

    def refuse(what):
        def fail(*args, **kwargs):
            raise RuntimeError(f"{item.nodeid} {what} in the fast tier: mark it @pytest.mark.integration")
        return fail

    mp = pytest.MonkeyPatch()
    mp.setattr(subprocess.Popen, "__init__", refuse("starts a process"))
    for module in ("m4mjax.train", "symmetry.train"):
        mp.setattr(f"{module}.train", refuse(f"trains ({module}.train)"))
    item.stash[_UNDO] = mp


def pytest_runtest_teardown(item, nextitem):
    mp = item.stash.get(_UNDO, None)
    if mp is not None:
        mp.undo()

