"""normfast: fast CPU normalization layers and statistics for NumPy."""
import os as _os
import warnings as _warnings
from importlib.metadata import PackageNotFoundError as _NotFound
from importlib.metadata import version as _version

from . import _checks, _normc, layers
from .dataset import DatasetError, DatasetStats, dataset_stats
from .reductions import moments
from .grads import (batch_norm_backward, group_norm_backward, instance_norm_backward, layer_norm_backward,
                    rms_norm_backward, switchable_norm_backward)
from .inference import cosine_linear, fold_batch_norm, weight_norm, weight_norm_params
from .norms import batch_norm, group_norm, instance_norm, layer_norm, rms_norm, switchable_norm
from .stats import RunningCovariance, RunningMoments, precise_batch_norm_stats
from .whitening import Whitening

try:
    __version__ = _version("normfast")
except _NotFound:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["moments", "batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm", "switchable_norm",
           "batch_norm_backward", "instance_norm_backward", "group_norm_backward", "layer_norm_backward",
           "rms_norm_backward", "switchable_norm_backward", "RunningMoments", "RunningCovariance",
           "precise_batch_norm_stats", "dataset_stats", "DatasetStats", "DatasetError", "Whitening",
           "fold_batch_norm", "weight_norm", "weight_norm_params", "cosine_linear",
           "layers", "set_num_threads", "get_num_threads", "max_threads", "show_config"]


def _cpu_count():
    """CPUs this process may run on."""
    try:
        return len(_os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return _os.cpu_count() or 1


def max_threads():
    """The most threads set_num_threads grants: 4 x the CPUs this process may run on. More only adds
    switching, and where the OS cannot create the threads OpenMP ends the process at the next call."""
    return 4 * _cpu_count()


def set_num_threads(n):
    """Number of threads the kernels use (default: OpenMP's, which honours OMP_NUM_THREADS): a positive
    int, capped at max_threads(). A limit set afterwards through OpenMP, such as threadpoolctl's
    threadpool_limits, still applies in its thread. Raises TypeError for a non-int and ValueError for
    n < 1."""
    _normc.set_num_threads(min(_checks.positive_int(n, "n"), max_threads()))


def get_num_threads():
    """The number of threads the kernels use (set_num_threads's, else OpenMP's default)."""
    return _normc.get_num_threads()


def show_config(mode="stdout"):
    """The build and runtime configuration, as NumPy's show_config gives its own: mode="stdout" prints it
    (one "key: value" line each) and returns None; mode="dicts" returns it as a dict, without printing.

    Keys: version; isa (the instruction set in use: baseline, avx2 or avx512), isa_available (those the
    CPU and the build allow), isa_compiled (those built in); openmp (whether threads are compiled in);
    num_threads (get_num_threads()). Raises ValueError for another mode."""
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode: expected 'stdout' or 'dicts', got {mode!r}")
    config = {
        "version": __version__,
        "isa": _normc.get_isa(),
        "isa_available": list(_normc.isa_supported()),
        "isa_compiled": list(_normc.isa_compiled()),
        "openmp": _normc.openmp_enabled(),
        "num_threads": _normc.get_num_threads(),
    }
    if mode == "dicts":
        return config
    width = max(map(len, config))
    for key, value in config.items():
        print(f"{key + ':':{width + 1}s} {', '.join(value) if isinstance(value, list) else value}")
    return None


def _apply_isa_cap():
    """NORMFAST_ISA=baseline|avx2|avx512 caps the instruction set chosen from the CPU's features."""
    cap = _os.environ.get("NORMFAST_ISA", "").strip().lower()
    if not cap:
        return
    if cap not in _normc.ISA_NAMES:
        _warnings.warn(f"NORMFAST_ISA: expected one of {', '.join(_normc.ISA_NAMES)}, got {cap!r}; ignored",
                       RuntimeWarning, stacklevel=2)
        return
    _normc.set_isa(cap)


_apply_isa_cap()
