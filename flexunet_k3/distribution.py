"""Data parallelism on the backends' own engines (`train.distribution: data_parallel`).

- JAX: Keras' `keras.distribution.DataParallel` over a device mesh; several processes or hosts
  join through `jax.distributed` (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID, or what JAX detects by itself under SLURM or Open MPI).
- TensorFlow: `tf.distribute.MirroredStrategy` over the local devices (one host).
- PyTorch: refused; Keras' `fit` does not drive torch.distributed.

`start` runs once per process, after the backend is chosen and before anything is built; the
model module builds and loads models under `current().scope()`. `train.batch_size` is the global
batch: each process feeds its share of every batch, and only process 0 writes files.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from flexunet_k3.config import Config, TrainConfig
from flexunet_k3.errors import UserError, first_line, is_count, plural

CPU_DEVICES = "FLEXUNET_CPU_DEVICES"  # split the CPU into this many devices (tests, benchmarks)
BACKENDS_WITH_IT = ("jax", "tensorflow")
MULTI_PROCESS_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@dataclass(frozen=True)
class Placement:
    """Where this process trains: the devices a model is replicated on (in all processes) and
    this process's place among them."""

    devices: tuple[str, ...] = ()  # empty: the backend's default device, no distribution
    process_index: int = 0
    process_count: int = 1
    strategy: object | None = None  # TensorFlow's MirroredStrategy

    @property
    def writes(self) -> bool:
        """Whether this process writes files and shows progress (process 0 only)."""
        return self.process_index == 0

    @property
    def device_count(self) -> int:
        return max(len(self.devices), 1)

    def scope(self) -> AbstractContextManager:
        """The context models are built, loaded and compiled in."""
        return self.strategy.scope() if self.strategy is not None else nullcontext()

    def lost_process(self, exc: Exception) -> UserError | None:
        """The one-line error for a collective operation that failed because another process
        of a multi-process run stopped; None for any other exception."""
        # A failed collective comes as JAX's runtime error or, from jax.device_put's check
        # that all processes agree, as a ValueError naming gloo (the CPU collectives)
        collective = type(exc).__name__ == "JaxRuntimeError" or "Gloo" in str(exc)
        if self.process_count == 1 or not collective:
            return None
        return UserError(
            f"process {self.process_index} of {self.process_count} stops: another process of "
            f"the run stopped or cannot be reached ({first_line(exc)}); see its log, then "
            "start all of them again (with --resume to go on from models/last.keras)"
        )


_current = Placement()


def current() -> Placement:
    """The placement `start` set up in this process (one default device before it runs)."""
    return _current


def start(config: Config, backend: str, command: str) -> Placement:
    """Set up `train.distribution` for this process and return where `command` runs.

    Only `flexunet train` runs in several processes. train.batch_size and infer.batch_size are
    global batches: each must divide by the device count. Errors name the setting to change.
    """
    global _current
    train = config.train
    if train.distribution == "none":
        if train.devices != "all" and train.devices > 1:
            warnings.warn(f"train.devices is {train.devices} but train.distribution is none: "
                          f"{command} runs on one device; set train.distribution: "
                          "data_parallel to use several", stacklevel=2)
        _current = Placement()
        return _current
    if backend not in BACKENDS_WITH_IT:
        raise UserError(
            f"train.distribution: data_parallel runs on the {' and '.join(BACKENDS_WITH_IT)} "
            f"backends, not on {backend} (Keras' fit does not drive torch.distributed): use "
            "the jax or tensorflow backend, or set train.distribution: none"
        )
    if command != "flexunet train" and multi_process_requested():
        raise UserError(
            f"{command} runs in one process: only flexunet train runs in several; run it "
            f"without {', '.join(MULTI_PROCESS_VARIABLES)} (it uses this host's devices)"
        )
    _current = _start_jax(train) if backend == "jax" else _start_tensorflow(train)
    for key, size in (("train.batch_size", train.batch_size),
                      ("infer.batch_size", config.infer.batch_size)):
        if size % _current.device_count:
            raise UserError(
                f"{key} is {size}, which does not divide by the {_current.device_count} "
                f"devices of train.distribution: data_parallel; {key} is the global batch, "
                f"so make it a multiple of {_current.device_count}"
            )
    return _current


def multi_process_requested() -> bool:
    """Whether the environment asks this process to join others (JAX's variables, or a SLURM
    or Open MPI launch of more than one task)."""
    if any(name in os.environ for name in MULTI_PROCESS_VARIABLES):
        return True
    tasks = os.environ.get("SLURM_NTASKS") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
    return is_count(tasks) and int(tasks) > 1


def join_jax_processes(timeout: int) -> None:
    """Where the environment asks for several processes and they are not joined yet:
    jax.distributed.initialize from it, with CPU collectives over gloo. A coordinator not
    reached, or processes not all joined, within `timeout` seconds end the process with one
    error line."""
    import jax

    if not multi_process_requested() or jax.distributed.is_initialized():
        return
    numbers = {}
    for name in MULTI_PROCESS_VARIABLES[1:]:
        text = os.environ.get(name)
        if text is not None and not is_count(text):
            raise UserError(f"{name} is {text!r}: it must be a whole number")
        numbers[name] = None if text is None else int(text)
    count, index = numbers["JAX_NUM_PROCESSES"], numbers["JAX_PROCESS_ID"]
    if count is not None and index is not None and not index < count:
        raise UserError(f"JAX_PROCESS_ID is {index} but JAX_NUM_PROCESSES is {count}: ids run "
                        "from 0 to JAX_NUM_PROCESSES - 1")
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address is not None:
        host, _, port = address.rpartition(":")
        if not host or not is_count(port) or not 0 < int(port) < 65536:
            raise UserError(f"JAX_COORDINATOR_ADDRESS is {address!r}: give host:port (a port "
                            "from 1 to 65535)")
    if address and index:
        _wait_for_coordinator(address, timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = address or "the coordinator"
    # Where the others do not all join in time, JAX ends the process from C++ with a stack
    # trace and no Python error: this timer ends it first, with one line (JAX waits longer).
    waiting = threading.Timer(timeout, _give_up, args=(
        f"the {count or 'other'} processes did not all join through {where} within "
        f"train.coordinator_timeout ({timeout} s); start every one of them with the same "
        "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES and its own JAX_PROCESS_ID",))
    waiting.daemon = True
    waiting.start()
    try:
        jax.distributed.initialize(
            num_processes=count, process_id=index, initialization_timeout=timeout + 60,
            heartbeat_timeout_seconds=timeout,
        )
    except Exception as exc:  # incomplete settings, outside a cluster JAX knows
        raise UserError(
            f"cannot join the other processes through {where}: {first_line(exc)}; check "
            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID"
        ) from None
    finally:
        waiting.cancel()


def _give_up(message: str) -> None:
    """Print `message` as the command's one error line and end the process (exit code 2)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def _wait_for_coordinator(address: str, timeout: int) -> None:
    """Return once something listens at `address` (host:port); a UserError after `timeout`
    seconds."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise UserError(
                    f"no coordinator answered at {address} within train.coordinator_timeout "
                    f"({timeout} s): {exc.strerror or exc}; start process 0 (JAX_PROCESS_ID=0) "
                    "there, or correct JAX_COORDINATOR_ADDRESS"
                ) from None
            time.sleep(0.5)


def _start_jax(train: TrainConfig) -> Placement:
    import jax
    import keras

    join_jax_processes(train.coordinator_timeout)
    found = jax.devices()
    chosen = _choose(found, train.devices, "JAX", jax.process_count())
    # Each process reads its own part of every batch (the loader), not a tf.data shard.
    data_parallel = keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False)
    keras.distribution.set_distribution(data_parallel)
    return Placement(tuple(str(d) for d in chosen), jax.process_index(), jax.process_count())


def _start_tensorflow(train: TrainConfig) -> Placement:
    import tensorflow as tf

    if _tensorflow_workers() > 1:
        raise UserError(
            "TF_CONFIG names several workers, but Keras 3's fit does not run "
            "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585): on several "
            "hosts use --backend jax; on one, unset TF_CONFIG"
        )
    found = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    chosen = _choose(found, train.devices, "TensorFlow", 1)
    names = [device.name for device in chosen]
    return Placement(tuple(names), strategy=tf.distribute.MirroredStrategy(names))


def _choose(found: list, wanted: int | str, engine: str, processes: int) -> list:
    """The first `wanted` devices of `found` ('all': every one)."""
    if wanted == "all":
        return found
    if wanted > len(found):
        kind = "CPU" if "CPU" in str(found[0]).upper() else "GPU"
        hint = (f"; to split the CPU into {wanted} devices (for tests), set {CPU_DEVICES}={wanted}"
                if kind == "CPU" else "")
        raise UserError(
            f"train.devices is {wanted} but {engine} sees {plural(len(found), kind + ' device')}"
            f": set train.devices to all or at most {len(found)}{hint}"
        )
    if processes > 1 and wanted != len(found):
        raise UserError(
            f"train.devices is {wanted} but {processes} processes hold {len(found)} devices: "
            "several processes train on all their devices; set train.devices: all"
        )
    return found[:wanted]


def _tensorflow_workers() -> int:
    """How many workers TF_CONFIG names (0 when unset); one TensorFlow could not read (its
    strategies read it too) is a UserError."""
    text = os.environ.get("TF_CONFIG")
    if text is None:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
        if not all(isinstance(tasks, list | dict) for tasks in cluster.values()):
            raise TypeError("a job's tasks must be a list")
        return len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    except (ValueError, AttributeError, TypeError):  # not JSON, or not TensorFlow's layout
        raise UserError(
            "TF_CONFIG is not TensorFlow's cluster JSON ({\"cluster\": {\"worker\": [...]}, "
            "...}); unset it: data_parallel on TensorFlow trains on this host's devices"
        ) from None


def cpu_device_count() -> int | None:
    """FLEXUNET_CPU_DEVICES as a count (None when unset or empty, as KERAS_BACKEND); anything
    else is a UserError."""
    text = os.environ.get(CPU_DEVICES)
    if not text:
        return None
    if not is_count(text) or not 1 <= int(text) <= 256:
        raise UserError(f"{CPU_DEVICES} is {text!r}: give the number of CPU devices, 1 to 256")
    return int(text)
