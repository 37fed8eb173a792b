"""vmamba-rl: VMamba-TD3 and HOPE-style SAC for vision- and sensor-based navigation."""

from vmamba_rl import envs as envs  # registers DroneNav-v0, Parking-v0, AirSimEnv-v42

__version__ = "0.1.0"
