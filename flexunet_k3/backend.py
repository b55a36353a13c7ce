"""Choose the Keras backend before keras is imported, and report versions and devices."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

from flexunet_k3.config import TrainConfig
from flexunet_k3.distribution import cpu_device_count
from flexunet_k3.errors import UserError, first_line
from flexunet_k3.precision import this_cpu_flags

BACKENDS = ("tensorflow", "jax", "torch")
_DISTRIBUTIONS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
JAX_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
JAX_TRUE = ("y", "yes", "t", "true", "on", "1")  # what JAX reads as true in a variable


def installed_backends() -> list[str]:
    """The backends whose Python package can be imported here."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def select_backend(name: str | None = None) -> str:
    """Set KERAS_BACKEND (from `name`, else the environment, else tensorflow) and check it;
    with FLEXUNET_CPU_DEVICES=N, the backend splits the CPU into N devices (JAX, TensorFlow).

    Must run before the first `import keras` in this process.
    """
    from_environment = name is None and bool(os.environ.get("KERAS_BACKEND"))
    if from_environment:
        chosen = os.environ["KERAS_BACKEND"]
    else:
        chosen = "tensorflow" if name is None else name
    if chosen not in BACKENDS:
        where = " (KERAS_BACKEND)" if from_environment else ""
        raise UserError(f"unknown backend {chosen!r}{where}: choose one of {', '.join(BACKENDS)}")
    cpu_devices = cpu_device_count()
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != chosen:
            raise UserError(
                f"keras was already imported with backend {keras.backend.backend()!r}; "
                f"the backend is fixed per process (asked for {chosen!r})"
            )
        return chosen
    if importlib.util.find_spec(chosen) is None:
        raise UserError(f"backend {chosen!r} is not installed: pip install 'flexunet-k3[{chosen}]'")
    os.environ["KERAS_BACKEND"] = chosen
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # 3: not even "no CUDA driver" errors
    if chosen == "jax":
        _keep_jax_compilations()
        if cpu_devices:
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                                       f"{cpu_devices}")
        try:
            import jax  # noqa: F401  (reads its JAX_* environment variables)
        except ValueError as exc:  # "invalid truth value 'x' for environment 'JAX_...'"
            raise UserError(f"{first_line(exc)}; fix or unset that variable") from None
    if chosen == "tensorflow":
        quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0"
        # TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL; set it to 0 to see them.
        with _native_stderr_closed() if quiet else contextlib.nullcontext():
            import tensorflow as tf
        if cpu_devices:
            tf.config.set_logical_device_configuration(
                tf.config.list_physical_devices("CPU")[0],
                [tf.config.LogicalDeviceConfiguration()] * cpu_devices,
            )
    else:
        from keras.src.utils import module_utils

        # Keras' saving asks whether tensorflow is importable, which imports it (seconds, and
        # about 0.5 GB) only to check for TensorFlow objects that cannot exist in this process.
        module_utils.tensorflow._available = "tensorflow" in sys.modules
    return chosen


def _keep_jax_compilations() -> None:
    """Let JAX keep what it compiles (a model's initializers, 10-15 s on a 2-core CPU; the
    train and predict steps) between commands, in jax_cache_folder(). JAX's own variables
    rule: JAX_COMPILATION_CACHE_DIR names another folder, JAX_ENABLE_COMPILATION_CACHE=false
    keeps nothing (a value JAX cannot read is left to JAX to refuse). Nothing is kept where
    the folder cannot be made."""
    enabled = os.environ.get("JAX_ENABLE_COMPILATION_CACHE", "true").lower() in JAX_TRUE
    if not enabled or os.environ.get(JAX_CACHE_VARIABLE):
        return
    folder = jax_cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    os.environ[JAX_CACHE_VARIABLE] = str(folder)
    # an initializer compiles in about 0.1 s, under JAX's default threshold of 1 s
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def jax_cache_folder() -> Path:
    """`$XDG_CACHE_HOME/flexunet-k3/jax-VERSION-CPU` (else `~/.cache/...`): one folder per
    jaxlib version and CPU kind, so a home shared between machines never serves a program
    compiled for another CPU's instructions."""
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        jaxlib = "none"
    cpu = " ".join([platform.machine(), *sorted(this_cpu_flags())])
    digest = hashlib.sha256(cpu.encode()).hexdigest()[:12]
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flexunet-k3" / f"jax-{jaxlib}-{digest}"


def jax_compile_cache() -> str | None:
    """The folder JAX keeps compiled programs in, None if it keeps none (imports jax)."""
    import jax

    folder = jax.config.jax_compilation_cache_dir
    return folder if folder and jax.config.jax_enable_compilation_cache else None


@contextlib.contextmanager
def _native_stderr_closed():
    """Send file descriptor 2 (what C++ code writes to) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def versions() -> dict[str, str]:
    """Installed versions of keras and of each backend package ('-' where missing)."""
    out = {}
    for name in ("keras", *BACKENDS):
        try:
            out[name] = importlib.metadata.version(_DISTRIBUTIONS.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def devices() -> list[str]:
    """Devices the active backend sees (imports keras and the backend)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices()]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
    return found


def processes() -> tuple[int, int]:
    """This process's index and the process count; under JAX, the environment's
    jax.distributed settings are joined first (flexunet_k3.distribution)."""
    import keras

    if keras.backend.backend() != "jax":
        return 0, 1
    import jax

    from flexunet_k3.distribution import join_jax_processes

    join_jax_processes(TrainConfig().coordinator_timeout)
    return jax.process_index(), jax.process_count()


def gpu_capability() -> tuple[int, int] | None:
    """Compute capability of the active backend's first GPU; None without one (or unreported)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
        found = details.get("compute_capability")
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        text = getattr(device, "compute_capability", None) if device.platform == "gpu" else None
        found = text and str(text).split(".")[:2]  # e.g. "9.0"
    else:
        import torch

        found = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    return tuple(int(part) for part in found) if found else None
