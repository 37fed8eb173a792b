"""Agents: TD3 (VMamba or CNN encoder) and the HOPE-style SAC; ``make_agent`` builds the configured one."""

from vmamba_rl.agents.factory import make_agent, single_step_space

__all__ = ["make_agent", "single_step_space"]
