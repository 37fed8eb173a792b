"""AirSimEnv-v42: the depth-camera drone navigation task in a running AirSim or Cosys-AirSim simulator.

The task rules (observation layout, action limits, reward, termination, goal sampling, depth scaling)
come from :mod:`vmamba_rl.envs.nav_task`, the same code DroneNav-v0 runs, so a policy trained in one
simulator can be evaluated in the other. This module only talks to the simulator over its msgpack-rpc
API (reference notes section 5):

- ``step``: unpause, ``moveByVelocityAsync(vx, vy, vz, duration, MaxDegreeOfFreedom,
  YawMode(is_rate=True, deg/s))`` while polling ``simGetCollisionInfo`` for the step duration (its
  ``has_collided`` clears when read, so the readings are OR-ed), pause, then read the pose
  (``simGetVehiclePose``), the velocities (``getMultirotorState``) and the DepthPerspective image
  (``simGetImages``, float, uncompressed, decoded with ``np.frombuffer``).
- ``reset``: ``reset``, ``enableApiControl``, ``armDisarm``, take off (``takeoffAsync`` then
  ``moveToZAsync`` to the start altitude), retried a bounded number of times, then a new goal.
- ``set_paused(bool)``: the training loop pauses the simulator during gradient updates.
- faults (no answer within ``timeout_s``, a dropped connection, a malformed image or pose) raise
  :class:`AirSimConnectionError` naming ``ip:port``; ``reconnect()`` opens a fresh connection with
  bounded retries and backoff; the next ``reset()`` starts a new episode.

The client library is imported lazily (``client="airsim"`` or ``"cosysairsim"``); without it,
constructing the environment raises ImportError with the install recipe. Options may be passed to
``gymnasium.make("AirSimEnv-v42", ...)`` (any :class:`AirSimConfig` or
:class:`~vmamba_rl.envs.nav_task.NavTaskConfig` field), or, for runs started by the ``vmamba-rl`` CLI,
which has no per-environment flags, as a JSON object in the environment variable ``VMAMBA_AIRSIM``
(e.g. ``VMAMBA_AIRSIM='{"ip": "192.168.1.20", "client": "cosysairsim"}'``); explicit keyword
arguments win.

Frames: AirSim's world frame is NED with its origin at the vehicle's start (PlayerStart), which is
the convention of nav_task: altitude = -z, yaw turns x toward y. Goals are sampled around the origin
in a square of side ``arena_size`` (from the DroneNav level table unless given); the Unreal map
decides where the obstacles are.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import gymnasium as gym
import numpy as np

from vmamba_rl.envs import nav_task
from vmamba_rl.envs.errors import SimulatorConnectionError
from vmamba_rl.envs.nav_task import NavTaskConfig

DEFAULT_PORT = 41451
CLIENT_MODULES = ("airsim", "cosysairsim")
ENV_VAR = "VMAMBA_AIRSIM"
INSTALL_HINT = (
    "AirSimEnv-v42 needs an AirSim client library. Install the [airsim] extra and the client:\n"
    "    pip install 'vmamba-rl[airsim]'\n"
    "    pip install --no-deps --no-build-isolation airsim==1.8.1\n"
    "(not a plain `pip install airsim`: it brings the old msgpack-rpc-python, which fails with\n"
    "msgpack >= 1, and its setup.py imports the package), or the maintained Cosys-AirSim client:\n"
    "    pip install 'vmamba-rl[airsim]' cosysairsim   # then pass client='cosysairsim'"
)
# AirSim's ImageType.DepthPerspective (the same number in both clients).
_DEPTH_PERSPECTIVE = 2


class AirSimConnectionError(SimulatorConnectionError):
    """The AirSim server at ``address`` (``"ip:port"``) did not answer, dropped the connection or
    sent malformed data. The training loop survives it: see :class:`SimulatorConnectionError`."""

    def __init__(self, message: str, address: str = "") -> None:
        super().__init__(message)
        self.address = address

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        # Keeps the address when the error crosses a process boundary (subprocess vector envs).
        return (self.__class__, (str(self), self.address))


class AirSimTakeoffError(AirSimConnectionError):
    """The vehicle did not reach the start altitude after the configured number of take-off attempts."""


@dataclass
class AirSimConfig:
    """Connection and simulator-side settings (the task rules are in NavTaskConfig).

    Units: seconds, metres, m/s.
    """

    ip: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    vehicle_name: str = ""  # "" = the default (first) vehicle of settings.json
    camera_name: str = "0"
    client: str = "airsim"  # "airsim" (1.8.1) or "cosysairsim"
    timeout_s: float = 10.0  # an RPC unanswered this long is a fault (the client counts whole 1 s ticks)
    clock_speed: float = 1.0  # settings.json ClockSpeed: a step takes step_duration / clock_speed wall s
    collision_poll_interval_s: float = 0.05  # wall seconds between simGetCollisionInfo polls during a step
    pause_between_steps: bool = True  # keep the simulator paused while the agent thinks (fixed step length)
    takeoff_retries: int = 3  # attempts (reset + take-off) before AirSimTakeoffError
    takeoff_timeout_s: float = 20.0  # simulated seconds allowed for takeoffAsync and for moveToZAsync
    takeoff_tolerance: float = 0.5  # |altitude - start_altitude| accepted after the take-off (m)
    climb_speed: float = 1.0  # moveToZAsync velocity (m/s)
    reconnect_retries: int = 3  # connection attempts made by reconnect()
    reconnect_backoff_s: float = 1.0  # wait before the 2nd attempt; doubles before each further one
    arena_size: float | tuple[float, float] | None = None  # goal-sampling square side (m); None: level's

    def __post_init__(self) -> None:
        if self.client not in CLIENT_MODULES:
            raise ValueError(f"client must be one of {', '.join(CLIENT_MODULES)}, got {self.client!r}")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("timeout_s", "clock_speed", "collision_poll_interval_s", "takeoff_timeout_s",
                     "takeoff_tolerance", "climb_speed"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.takeoff_retries < 1 or self.reconnect_retries < 1:
            raise ValueError("takeoff_retries and reconnect_retries must be >= 1")
        if self.reconnect_backoff_s < 0:
            raise ValueError(f"reconnect_backoff_s must be >= 0, got {self.reconnect_backoff_s}")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


def import_client(name: str) -> Any:
    """Import the AirSim client module ``name`` (``airsim`` or ``cosysairsim``) with a helpful error."""
    if name not in CLIENT_MODULES:
        raise ValueError(f"client must be one of {', '.join(CLIENT_MODULES)}, got {name!r}")
    try:
        module = importlib.import_module(name)
        importlib.import_module("msgpackrpc.error")
    except ImportError as e:
        raise ImportError(f"cannot import {name!r} ({e}).\n{INSTALL_HINT}") from e
    _check_msgpackrpc()
    return module


def _check_msgpackrpc() -> None:
    """Refuse the old msgpack-rpc-python (what a plain `pip install airsim` brings) next to msgpack >= 1:
    it imports fine but every call fails with a TypeError about ``encoding``."""
    try:
        import msgpack

        rpc_version = str(importlib.import_module("msgpackrpc._version").__version__)
    except (ImportError, AttributeError):
        return
    if rpc_version.startswith("0.4") and tuple(msgpack.version) >= (1,):
        raise ImportError(
            f"msgpackrpc {rpc_version} is the old msgpack-rpc-python, which fails with msgpack "
            f"{'.'.join(map(str, msgpack.version))}; replace it with rpc-msgpack:\n"
            "    pip uninstall -y msgpack-rpc-python msgpack-python\n"
            "    pip install --force-reinstall 'rpc-msgpack>=0.6' 'msgpack>=1'\n"
            f"{INSTALL_HINT}"
        )


def quaternion_to_euler(w: float, x: float, y: float, z: float) -> tuple[float, float, float]:
    """Unit quaternion -> (roll, pitch, yaw) in rad, aerospace ZYX order (AirSim's convention).

    Written out here because the two clients' helpers return the angles in different orders.
    """
    roll = math.atan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2.0 * (w * y - z * x))))
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return roll, pitch, yaw


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) -> (height, width) by nearest-neighbour sampling (depth must not be blended across edges)."""
    h, w = image.shape
    if (h, w) == (height, width):
        return image
    rows = (np.arange(height) * h) // height
    cols = (np.arange(width) * w) // width
    return image[rows[:, None], cols[None, :]]


def _options_from_environment() -> dict[str, Any]:
    """Options from ``$VMAMBA_AIRSIM`` (a JSON object), or {} when it is unset."""
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"${ENV_VAR} must hold a JSON object of AirSimEnv-v42 options: {e}") from e
    if not isinstance(options, dict):
        raise ValueError(f"${ENV_VAR} must hold a JSON object, got {type(options).__name__}")
    return options


class AirSimNavEnv(gym.Env):
    """Depth-camera drone navigation in AirSim / Cosys-AirSim (``AirSimEnv-v42``).

    Observation, action, reward, termination and ``info`` keys are those of DroneNav-v0
    (:class:`~vmamba_rl.envs.drone_nav.DroneNavEnv`): ``depth`` uint8 (1, H, W) perspective depth
    (0 = near, 255 = ``max_depth`` or beyond), ``base`` float32 (10,); action Box (3,)
    ``[forward_speed, z_velocity (NED), yaw_rate (rad/s)]`` held ``step_duration`` simulated seconds;
    terminated on success / collision / too high, truncated after ``max_steps``.

    Args:
        level: DroneNav level whose arena size range is used for goal sampling (``empty``, ``easy``,
            ``medium``, ``hard``) unless ``arena_size`` is given; obstacles are the Unreal map's.
        render_mode: None or ``"rgb_array"`` (the last depth image as gray RGB).
        task, sim: full configurations; ``**overrides`` sets single fields of either.

    ``reset(options=...)`` keys: ``goal`` (x, y) in metres, ``level``, ``arena_size``.
    The connection is opened at the first ``reset`` (so constructing an evaluation copy is free).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(
        self,
        level: str = "easy",
        render_mode: str | None = None,
        task: NavTaskConfig | None = None,
        sim: AirSimConfig | None = None,
        **overrides: Any,
    ) -> None:
        overrides = {**_options_from_environment(), **overrides}
        task_keys = {k: v for k, v in overrides.items() if k in NavTaskConfig.field_names()}
        sim_keys = {k: v for k, v in overrides.items() if k in AirSimConfig.field_names()}
        unknown = set(overrides) - set(task_keys) - set(sim_keys)
        if unknown:
            valid = sorted(NavTaskConfig.field_names() | AirSimConfig.field_names())
            raise TypeError(f"unknown AirSimNavEnv option(s) {sorted(unknown)}; valid: {', '.join(valid)}")
        task = task if task is not None else NavTaskConfig()
        sim = sim if sim is not None else AirSimConfig()
        self.task = replace(task, **task_keys) if task_keys else task
        self.sim = replace(sim, **sim_keys) if sim_keys else sim
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        # Fail at construction, not at the first reset, when the client library is missing.
        self._module = import_client(self.sim.client)
        self._rpc_errors = importlib.import_module("msgpackrpc.error")
        self.set_level(level)
        self.observation_space = nav_task.make_observation_space(self.task)
        self.action_space = nav_task.make_action_space(self.task)
        self.address = f"{self.sim.ip}:{int(self.sim.port)}"

        self._client: Any = None
        self._paused_for_loop = False  # set_paused(True) from the training loop is in force
        self._episode: nav_task.NavEpisode | None = None
        self.goal = np.zeros(2)
        self.arena_size = 0.0
        self._yaw = 0.0
        self._forward_speed = 0.0
        self._last_depth: np.ndarray | None = None

    # ---------------------------------------------------------------------------------- configuration

    def set_level(self, level: str) -> None:
        """Choose the goal-sampling level used from the next reset on (see DroneNav's level table)."""
        from vmamba_rl.envs.drone_nav import LEVELS  # the one level table, shared with DroneNav-v0

        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        self.level = level
        self._level_arena = LEVELS[level].arena_size

    # ------------------------------------------------------------------------------------ connection

    def _connect(self) -> None:
        """Open a client and check that the server answers (``ping``)."""
        self._drop_client()
        client = self._module.MultirotorClient(
            ip=self.sim.ip, port=int(self.sim.port), timeout_value=self.sim.timeout_s
        )
        self._client = client
        try:
            self._call("ping", client.ping)
        except AirSimConnectionError:
            self._drop_client()
            raise

    def _drop_client(self) -> None:
        """Close the current client (if any); a broken client is never reused."""
        # The episode is kept: a step after a fault then reports the fault (not "call reset()").
        client, self._client = self._client, None
        if client is None:
            return
        session = getattr(client, "client", None)
        try:
            if session is not None:
                # msgpackrpc treats the end of its read loop after close() as a failed connection and
                # opens a new, orphaned one; forbidding reconnects first prevents that leak.
                transport = getattr(session, "_transport", None)
                if transport is not None and hasattr(transport, "_reconnect_limit"):
                    transport._reconnect_limit = 0
                session.close()
                # The client registered a 1 s timeout tick on the thread's event loop; stop it so
                # reconnects do not pile them up.
                loop = getattr(session, "_loop", None)
                if loop is not None and hasattr(loop, "dettach_periodic_callback"):
                    loop.dettach_periodic_callback()
        except Exception:  # noqa: BLE001 - closing a dead connection must not mask the original fault
            pass

    def reconnect(self, retries: int | None = None, backoff_s: float | None = None) -> None:
        """Drop the current connection and open a new one (the next ``reset`` starts a new episode).

        Makes up to ``retries`` attempts (default ``reconnect_retries``), waiting ``backoff_s``
        (default ``reconnect_backoff_s``) before the second and doubling the wait before each further
        one. Raises :class:`AirSimConnectionError` when every attempt failed.
        """
        retries = self.sim.reconnect_retries if retries is None else int(retries)
        backoff = self.sim.reconnect_backoff_s if backoff_s is None else float(backoff_s)
        last: AirSimConnectionError | None = None
        for attempt in range(max(retries, 1)):
            if attempt > 0:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                self._connect()
                self._episode = None  # the simulator's state is unknown now: reset() starts afresh
                return
            except AirSimConnectionError as e:
                last = e
        raise AirSimConnectionError(
            f"could not reconnect to AirSim at {self.address} after {max(retries, 1)} attempt(s): {last}",
            self.address,
        ) from last

    def _require_client(self) -> Any:
        if self._client is None:
            raise AirSimConnectionError(f"not connected to AirSim at {self.address}", self.address)
        return self._client

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one client call, turning the client's errors into AirSimConnectionError (or RuntimeError
        for an error the server reports, which a reconnect would not fix)."""
        err = self._rpc_errors
        try:
            return fn(*args, **kwargs)
        except err.TimeoutError as e:
            if self._connection_closed():
                raise AirSimConnectionError(
                    f"AirSim at {self.address} closed the connection (no answer to {what} within "
                    f"{self.sim.timeout_s:g} s)",
                    self.address,
                ) from e
            raise AirSimConnectionError(
                f"AirSim at {self.address} did not answer {what} within {self.sim.timeout_s:g} s "
                "(is the simulator running and not frozen?)",
                self.address,
            ) from e
        except err.TransportError as e:
            raise AirSimConnectionError(
                f"cannot reach AirSim at {self.address}: the connection was refused or dropped during "
                f"{what} ({e}); is the simulator running, and are ip / port right?",
                self.address,
            ) from e
        except err.RPCError as e:
            text = str(e)
            if "closed" in text.lower():  # the transport's "Stream is closed." surfaces as a plain RPCError
                raise AirSimConnectionError(
                    f"AirSim at {self.address} closed the connection during {what}", self.address
                ) from e
            raise RuntimeError(f"AirSim at {self.address} rejected {what}: {text}") from e
        except OSError as e:
            raise AirSimConnectionError(
                f"network error talking to AirSim at {self.address} during {what}: {e}", self.address
            ) from e

    def _connection_closed(self) -> bool:
        """Best effort: True when the client's transport has no open socket left (the peer hung up)."""
        try:
            transport = self._client.client._transport
            return transport is None or len(transport._sockets) == 0
        except AttributeError:
            return False

    def _await(self, future: Any, what: str, min_wall_s: float, limit_wall_s: float,
               poll: Callable[[], None]) -> bool:  # fmt: skip
        """Wait for an async command's answer, calling ``poll`` (an RPC) at least once and meanwhile.

        The client's futures only progress while an RPC runs, so polling also delivers the answer.
        Returns once ``min_wall_s`` has passed and the command answered (True), or False when
        ``limit_wall_s`` passed first or the answer was the client's own time-out (a long command is
        not a fault as long as the polls are answered). A server-reported error raises RuntimeError.
        """
        done: list[bool] = []
        future.attach_callback(lambda _f: done.append(True))
        t0 = time.monotonic()
        while True:
            poll()
            elapsed = time.monotonic() - t0
            if done and elapsed >= min_wall_s:
                break
            if elapsed >= limit_wall_s:
                return False
            if elapsed < min_wall_s:
                time.sleep(min(self.sim.collision_poll_interval_s, min_wall_s - elapsed))
            else:
                time.sleep(min(self.sim.collision_poll_interval_s, 0.01))
        error = future.error
        if error is None:
            return True
        if isinstance(error, self._rpc_errors.TimeoutError):
            return False
        raise RuntimeError(f"AirSim at {self.address} rejected {what}: {error}")

    # ---------------------------------------------------------------------------------------- pausing

    def _sim_pause(self, paused: bool) -> None:
        client = self._require_client()
        self._call(f"simPause({paused})", client.simPause, bool(paused))

    def set_paused(self, paused: bool) -> None:
        """Pause (True) or release (False) the simulator for the training loop's gradient updates.

        While paused, nothing moves between steps even with ``pause_between_steps=False``; each
        ``step`` still runs its action. Does nothing while not connected. A connection fault here is
        not raised (the training loop calls this outside its fault handling around ``step`` and
        ``reset``): the connection is dropped and the next ``step`` raises AirSimConnectionError.
        """
        self._paused_for_loop = bool(paused)
        if self._client is None:
            return
        try:
            if paused:
                self._sim_pause(True)
            elif not self.sim.pause_between_steps and self._episode is not None:
                self._sim_pause(False)
        except AirSimConnectionError as e:
            gym.logger.warn(f"set_paused({paused}) failed: {e}")
            self._drop_client()

    # -------------------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        if "level" in options:
            self.set_level(options.pop("level"))
        unknown = set(options) - {"goal", "arena_size"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; valid: level, goal, arena_size")
        rng = self.np_random
        # Draw the goal first, so a seed gives the same goal whatever the simulator does.
        arena = options.get("arena_size", self.sim.arena_size)
        if arena is None:
            arena = self._level_arena
        if isinstance(arena, (int, float)):
            self.arena_size = float(arena)
        else:
            self.arena_size = float(rng.uniform(float(arena[0]), float(arena[1])))
        if options.get("goal") is not None:
            goal = np.asarray(options["goal"], dtype=np.float64)
            if goal.shape != (2,):
                raise ValueError(f"goal must be (x, y), got shape {goal.shape}")
        else:
            goal = nav_task.sample_goal(rng, self.arena_size, self.task)
        self.goal = goal

        if self._client is None:
            self._connect()
        try:
            self._take_off()
            obs, position = self._observe()
        except AirSimConnectionError:
            self._drop_client()
            raise
        self._episode = nav_task.NavEpisode(self.task, self.goal, position)
        return obs, self._episode.info()

    def _take_off(self) -> None:
        """reset + enableApiControl + armDisarm + take-off to the start altitude, retried; ends paused
        (if configured) with the collision flag cleared."""
        client, s, v = self._require_client(), self.sim, self.sim.vehicle_name
        target = self.task.start_altitude
        limit = s.takeoff_timeout_s / s.clock_speed + s.timeout_s
        altitude = float("nan")
        for _attempt in range(s.takeoff_retries):
            self._call("reset", client.reset)
            self._call("enableApiControl", client.enableApiControl, True, vehicle_name=v)
            self._call("armDisarm", client.armDisarm, True, vehicle_name=v)
            self._sim_pause(False)  # nothing flies while paused

            def ping() -> None:
                self._call("ping", client.ping)

            future = self._call("takeoffAsync", client.takeoffAsync, timeout_sec=s.takeoff_timeout_s,
                                vehicle_name=v)  # fmt: skip
            self._await(future, "takeoffAsync", 0.0, limit, ping)
            future = self._call(
                "moveToZAsync", client.moveToZAsync, -target, s.climb_speed,
                timeout_sec=s.takeoff_timeout_s, vehicle_name=v,
            )  # fmt: skip
            self._await(future, "moveToZAsync", 0.0, limit, ping)
            pose = self._call("simGetVehiclePose", client.simGetVehiclePose, vehicle_name=v)
            altitude = -float(pose.position.z_val)
            if math.isfinite(altitude) and abs(altitude - target) <= s.takeoff_tolerance:
                if s.pause_between_steps or self._paused_for_loop:
                    self._sim_pause(True)
                # Contact with the ground before the take-off is not a collision of this episode:
                # reading the flag clears it.
                self._call("simGetCollisionInfo", client.simGetCollisionInfo, vehicle_name=v)
                return
        raise AirSimTakeoffError(
            f"AirSim at {self.address}: the vehicle did not reach {target:g} m altitude after "
            f"{s.takeoff_retries} take-off attempt(s) (last altitude {altitude:.2f} m)",
            self.address,
        )

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode is None or self._episode.done:
            raise RuntimeError(
                "call reset() before step() (the episode is over, never started, or a connection fault "
                "broke it: reconnect() then reset())"
            )
        a = nav_task.clip_action(self.task, action)
        client, s, v = self._require_client(), self.sim, self.sim.vehicle_name
        # The forward speed is along the heading at the start of the step (world-frame command).
        vx, vy = a[0] * math.cos(self._yaw), a[0] * math.sin(self._yaw)
        collided = False

        def poll_collision() -> None:
            nonlocal collided
            info = self._call("simGetCollisionInfo", client.simGetCollisionInfo, vehicle_name=v)
            collided = collided or bool(getattr(info, "has_collided", False))

        try:
            self._sim_pause(False)
            future = self._call(
                "moveByVelocityAsync", client.moveByVelocityAsync, float(vx), float(vy), float(a[1]),
                float(self.task.step_duration), self._module.DrivetrainType.MaxDegreeOfFreedom,
                self._module.YawMode(is_rate=True, yaw_or_rate=math.degrees(float(a[2]))), vehicle_name=v,
            )  # fmt: skip
            window = self.task.step_duration / s.clock_speed
            if not self._await(future, "moveByVelocityAsync", window, window + s.timeout_s, poll_collision):
                raise AirSimConnectionError(
                    f"AirSim at {self.address} did not finish moveByVelocityAsync within "
                    f"{s.timeout_s:g} s of its {self.task.step_duration:g} s duration",
                    self.address,
                )
            if s.pause_between_steps or self._paused_for_loop:
                self._sim_pause(True)
            obs, position = self._observe()
        except AirSimConnectionError:
            self._drop_client()
            raise
        out = self._episode.update(a, position, self._yaw, self._forward_speed, collided)
        return obs, out.reward, out.terminated, out.truncated, self._episode.info()

    # ---------------------------------------------------------------------------------- observation

    def _observe(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Read pose, velocities and depth; returns (observation, position (3,) [x, y, altitude])."""
        client, v = self._require_client(), self.sim.vehicle_name
        pose = self._call("simGetVehiclePose", client.simGetVehiclePose, vehicle_name=v)
        state = self._call("getMultirotorState", client.getMultirotorState, vehicle_name=v)
        try:
            p, q = pose.position, pose.orientation
            kin = state.kinematics_estimated
            lin, ang = kin.linear_velocity, kin.angular_velocity
            values = [
                p.x_val, p.y_val, p.z_val, q.w_val, q.x_val, q.y_val, q.z_val,
                lin.x_val, lin.y_val, lin.z_val, ang.z_val,
            ]  # fmt: skip
            x, y, z, qw, qx, qy, qz, vx, vy, vz, yaw_rate = (float(val) for val in values)
        except (AttributeError, TypeError, ValueError) as e:
            raise AirSimConnectionError(
                f"AirSim at {self.address} sent a malformed state: {e}", self.address
            ) from e
        if not all(math.isfinite(val) for val in (x, y, z, qw, qx, qy, qz, vx, vy, vz, yaw_rate)):
            # AirSim answers NaN for an unknown vehicle name.
            raise AirSimConnectionError(
                f"AirSim at {self.address} sent a non-finite pose or velocity for vehicle "
                f"{self.sim.vehicle_name!r} (wrong vehicle_name?)",
                self.address,
            )
        norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        if norm < 1e-6:
            raise AirSimConnectionError(f"AirSim at {self.address} sent a zero quaternion", self.address)
        roll, pitch, yaw = quaternion_to_euler(qw / norm, qx / norm, qy / norm, qz / norm)
        self._yaw = yaw
        self._forward_speed = vx * math.cos(yaw) + vy * math.sin(yaw)
        altitude = -z
        depth_m = self._read_depth()
        depth = nav_task.depth_to_uint8(depth_m, self.task.max_depth)
        if self.task.depth_noise:
            depth = nav_task.apply_depth_noise(depth, self.np_random, self.task)
        self._last_depth = depth
        base = nav_task.make_base_vector(
            self.task, np.array([x, y]), altitude, np.array([vx, vy]), vz, yaw_rate, pitch, roll, yaw,
            self.goal,
        )  # fmt: skip
        return {"depth": depth[None].copy(), "base": base}, np.array([x, y, altitude])

    def _read_depth(self) -> np.ndarray:
        """DepthPerspective from the configured camera, metres, resized to (image_height, image_width)."""
        client, m = self._require_client(), self._module
        request = m.ImageRequest(self.sim.camera_name, m.ImageType.DepthPerspective, pixels_as_float=True,
                                 compress=False)  # fmt: skip
        responses = self._call(
            "simGetImages", client.simGetImages, [request], vehicle_name=self.sim.vehicle_name
        )
        return self.decode_depth(responses)

    def decode_depth(self, responses: Sequence[Any]) -> np.ndarray:
        """simGetImages answer -> (image_height, image_width) float32 metres; validates everything.

        AirSim sends the floats as a msgpack array (a list here) or raw bytes; both are decoded without
        the clients' numpy helpers (which break on numpy 2). A missing, empty or truncated image raises
        AirSimConnectionError.
        """
        addr = self.address
        if not isinstance(responses, (list, tuple)) or len(responses) != 1:
            n = len(responses) if isinstance(responses, (list, tuple)) else type(responses).__name__
            raise AirSimConnectionError(f"AirSim at {addr} sent {n} images for 1 depth request", addr)
        r = responses[0]
        width, height = int(getattr(r, "width", 0) or 0), int(getattr(r, "height", 0) or 0)
        data = getattr(r, "image_data_float", None)
        if width <= 0 or height <= 0:
            raise AirSimConnectionError(
                f"AirSim at {addr} sent an empty depth image from camera {self.sim.camera_name!r} "
                f"({getattr(r, 'message', '')!r}; wrong camera_name or vehicle_name?)",
                addr,
            )
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) % 4:
                raise AirSimConnectionError(
                    f"AirSim at {addr} sent a malformed depth image: {len(data)} bytes is not whole "
                    "float32 values",
                    addr,
                )
            pixels = np.frombuffer(data, dtype="<f4")
        elif isinstance(data, (list, tuple)):
            # A msgpack float array arrives as a list of Python floats: pack it back to float32 bytes so
            # the decoding stays a single np.frombuffer whatever the transport gave.
            try:
                pixels = np.frombuffer(np.asarray(data, dtype="<f4").tobytes(), dtype="<f4")
            except (TypeError, ValueError) as e:
                raise AirSimConnectionError(
                    f"AirSim at {addr} sent a malformed depth image: {e}", addr
                ) from e
        else:
            raise AirSimConnectionError(
                f"AirSim at {addr} sent no float depth data (got {type(data).__name__})", addr
            )
        if pixels.size != width * height:
            raise AirSimConnectionError(
                f"AirSim at {addr} sent a malformed (truncated?) depth image: {pixels.size} values for "
                f"{width}x{height}",
                addr,
            )
        image = pixels.reshape(height, width)
        return resize_nearest(image, self.task.image_height, self.task.image_width)

    # ------------------------------------------------------------------------------------ misc API

    @property
    def episode(self) -> nav_task.NavEpisode | None:
        """The running episode's book-keeping (None before reset or after a connection fault)."""
        return self._episode

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the last depth image as (H, W, 3) uint8 gray."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        depth = (
            self._last_depth
            if self._last_depth is not None
            else np.zeros((self.task.image_height, self.task.image_width), np.uint8)
        )
        return np.repeat(depth[..., None], 3, axis=2)

    def close(self) -> None:
        """Unpause the simulator, release API control (best effort) and close the connection."""
        if self._client is not None:
            try:
                self._sim_pause(False)
                self._call("enableApiControl", self._client.enableApiControl, False,
                           vehicle_name=self.sim.vehicle_name)  # fmt: skip
            except (AirSimConnectionError, RuntimeError):
                pass  # the simulator is gone: nothing to release
        self._drop_client()
        self._episode = None
