"""Checkpoints: atomic writes, ``weights_only`` loads, and errors that name the mismatch.

A checkpoint is a dict of plain tensors, numbers, strings, lists and dicts (no pickled objects), so it
loads with ``torch.load(weights_only=True)``. It is written to a temporary file in the same folder and
renamed, so a kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "vmamba-rl-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another architecture / algorithm."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as "file write failed"
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise write_error(path, e) from e
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_error(path: str | os.PathLike, err: BaseException) -> OSError:
    """An OSError that says what could not be written, where, and how much room its disk has left."""
    import errno
    import shutil

    try:
        free = f"{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 1e6:.0f} MB free there"
    except OSError:
        free = "its folder is not readable"
    code = getattr(err, "errno", None) or errno.EIO
    return OSError(code, f"cannot write {os.fspath(path)} ({free}): {err}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (the replay file's fingerprint in its checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


FAULT_ENV = "VMAMBA_RL_FAULT_AT"
_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook: ``$VMAMBA_RL_FAULT_AT=name:n`` kills this process with SIGKILL the n-th time the save
    reaches ``name`` (``replay_written``, ``committed``), so kill tests can hit the inside of a save."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    where, _, n = spec.partition(":")
    if where != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_torch_save` with ``weights_only=True``.

    Raises :class:`CheckpointError` for a missing file, a corrupt file or a foreign format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled objects...
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a vmamba-rl checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a vmamba-rl checkpoint (no '{FORMAT}' header)")
    if obj.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {obj.get('version')}, expected {VERSION}"
        )
    return obj


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``module.load_state_dict`` with an error that lists missing, unexpected and mis-shaped entries."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append("missing: " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
        raise CheckpointError(
            f"checkpoint does not fit {where} (was it trained with another architecture or preset?): "
            + " | ".join(parts)
        )
    module.load_state_dict(state)


def generator_state(rng: np.random.Generator) -> list[int]:
    """A numpy PCG64 generator's state as 6 unsigned 64-bit words: the 128-bit state and increment
    split in halves, then ``has_uint32`` and ``uinteger``. The one format every checkpointed generator
    uses: plain ints for ``torch.load(weights_only=True)``, a uint64 array in ``np.savez``."""
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise ValueError(f"only PCG64 generators can be saved, got {state['bit_generator']}")
    mask = (1 << 64) - 1
    s, inc = int(state["state"]["state"]), int(state["state"]["inc"])
    words = [s >> 64, s & mask, inc >> 64, inc & mask, int(state["has_uint32"]), int(state["uinteger"])]
    return words


def set_generator_state(rng: np.random.Generator, state: Any) -> None:
    """Restore :func:`generator_state` words into ``rng``; also reads the forms older checkpoints hold
    (the ``bit_generator.state`` dict, or its JSON text)."""
    if isinstance(state, str):
        state = json.loads(state)
    if isinstance(state, dict):
        rng.bit_generator.state = dict(state)
        return
    w = [int(v) for v in np.asarray(state, dtype=np.uint64).reshape(-1)]
    if len(w) != 6:
        raise ValueError(f"a generator state holds 6 uint64 words, got {len(w)}")
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": w[4],
        "uinteger": w[5],
    }
