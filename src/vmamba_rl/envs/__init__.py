"""Environments: embedded DroneNav-v0 and Parking-v0, and the AirSimEnv-v42 adapter.

Importing :mod:`vmamba_rl` registers them with Gymnasium; the modules load lazily on ``gymnasium.make``.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry


def register_envs() -> None:
    """Register DroneNav-v0, Parking-v0 and AirSimEnv-v42 (idempotent)."""
    specs = {
        "DroneNav-v0": "vmamba_rl.envs.drone_nav:DroneNavEnv",
        "Parking-v0": "vmamba_rl.envs.parking:ParkingEnv",
        "AirSimEnv-v42": "vmamba_rl.envs.airsim_env:AirSimNavEnv",
    }
    for env_id, entry in specs.items():
        if env_id not in registry:
            # No TimeLimit wrapper: each environment truncates at its own step limit and reports
            # is_timeout in info (the original returned timeouts as terminated; here they truncate).
            register(id=env_id, entry_point=entry)


register_envs()
