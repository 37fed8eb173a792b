"""The design document's three Python examples (docs/design.md, "Python interface"), run as written
except for Gymnasium's API: ``reset`` returns ``(obs, info)``, ``step`` a 5-tuple (``done`` is
``terminated or truncated``). Also changed, and only this: the environment is DroneNav-v0 through
``make_env`` (AirSim needs a simulator; ``make_env`` adds the K-step history the examples' ``obs``
holds), ``get_config`` is ``make_config`` with a test-sized budget, the training loop's ``observation``
is set from the first reset (the document reads it before assigning it) and the loop returns its
agent, and the plotting calls are left out (the figures need seaborn and a display)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vmamba_rl.agents.vmamba_td3 import VMambaTD3Agent, make_agent
from vmamba_rl.config import make_config
from vmamba_rl.envs.make import make_env

pytestmark = pytest.mark.slow


def get_config():
    """The document's defaults (``light``-sized encoder, feature_dim 128), a budget a test can afford
    (16 steps, 32 x 32 depth frames: the custom config's encoder costs seconds per update on a CPU)."""
    return make_config(
        None, level="empty", device="cpu", max_timesteps=16, learning_starts=10, batch_size=4,
        save_interval=8, buffer_size=200, scan_backend="chunked", seed=3,
        env_kwargs={"image_height": 32, "image_width": 32},
    )  # fmt: skip


def custom_training_loop(env):
    """The document's custom training loop."""
    initial_obs, _ = env.reset(seed=0)
    args = get_custom_config()
    agent = make_agent(env, initial_obs, args)
    observation = initial_obs
    for timestep in range(args.max_timesteps):
        action = agent.select_action(observation["base"], observation["depth"])
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        agent.replay_buffer.add(
            observation["base"], observation["depth"], action, reward,
            next_obs["base"], next_obs["depth"], float(done)
        )  # fmt: skip
        if timestep >= args.learning_starts:
            metrics = agent.train(progress_ratio=timestep / args.max_timesteps)
            if timestep % 1000 == 0:
                print(
                    f"Step {timestep}: Actor Loss = {metrics['actor_loss']:.4f}, "
                    f"Critic Loss = {metrics['critic_loss']:.4f}"
                )
        if done:
            observation, _ = env.reset()
        else:
            observation = next_obs
        if timestep % args.save_interval == 0:
            agent.save(f"models/vmamba_td3_{timestep}.pth")
    return agent


def get_custom_config():
    """The document's overrides (a larger encoder) on top of ``get_config``."""
    args = get_config()
    args.vmamba_hidden_dim = 96
    args.vmamba_num_vss_blocks = [2, 2, 6, 2]
    args.vmamba_temporal_layers = 2
    args.feature_dim = 256
    args.hidden_dim = 512
    return args


def evaluate_model(env, model_path, num_episodes=10):
    """The document's evaluation script."""
    initial_obs, _ = env.reset(seed=0)
    args = get_config()
    agent = make_agent(env, initial_obs, args)
    agent.load(model_path)
    episode_rewards, episode_lengths = [], []
    for episode in range(num_episodes):
        obs, _ = env.reset()
        episode_reward, episode_length = 0, 0
        while True:
            action = agent.select_action(obs["base"], obs["depth"], noise=False)
            next_obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            episode_reward += reward
            episode_length += 1
            if done:
                break
            obs = next_obs
        episode_rewards.append(episode_reward)
        episode_lengths.append(episode_length)
        print(f"Episode {episode + 1}: Reward = {episode_reward:.2f}, Length = {episode_length}")
    print(f"Mean Reward: {np.mean(episode_rewards):.2f} ± {np.std(episode_rewards):.2f}")
    return episode_rewards, episode_lengths


def attention_weights_of(env, model_path):
    """The document's ``visualize_attention_weights`` up to the figure."""
    obs, _ = env.reset(seed=0)
    args = get_config()
    agent = make_agent(env, obs, args)
    agent.load(model_path)
    with torch.no_grad():
        base_seq = torch.as_tensor(obs["base"], dtype=torch.float32).unsqueeze(0)
        depth_seq = torch.as_tensor(obs["depth"], dtype=torch.float32).unsqueeze(0)
        attention_weights = agent.actor_mamba.cross_attn.get_attention_weights(
            agent.actor_mamba.temporal(
                agent.actor_mamba.fusion(
                    agent.actor_visual_encoder(depth_seq.view(-1, *depth_seq.shape[2:])).view(1, -1, 128),
                    agent.actor_state_encoder(base_seq),
                )
            )
        )
    return agent, attention_weights


def feature_evolution(env, model_path, num_steps=100):
    """The document's ``visualize_feature_evolution`` up to the figure."""
    obs, _ = env.reset(seed=0)
    args = get_config()
    agent = make_agent(env, obs, args)
    agent.load(model_path)
    visual_features, state_features, context_features = [], [], []
    for step in range(num_steps):  # noqa: B007 (the document's loop variable)
        action = agent.select_action(obs["base"], obs["depth"], noise=False)
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        with torch.no_grad():
            base_seq = torch.as_tensor(obs["base"], dtype=torch.float32).unsqueeze(0)
            depth_seq = torch.as_tensor(obs["depth"], dtype=torch.float32).unsqueeze(0)
            visual_feat = agent.actor_visual_encoder(depth_seq.view(-1, *depth_seq.shape[2:])).view(
                1, -1, 128
            )
            state_feat = agent.actor_state_encoder(base_seq)
            context_feat = agent.actor_mamba(visual_feat, state_feat)
            visual_features.append(visual_feat.mean(dim=1).cpu().numpy())
            state_features.append(state_feat.mean(dim=1).cpu().numpy())
            context_features.append(context_feat.cpu().numpy())
        if done:
            obs, _ = env.reset()
        else:
            obs = next_obs
    return np.array(visual_features), np.array(state_features), np.array(context_features)


def test_custom_training_loop_stores_every_step_in_the_design_form_and_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = make_env(get_config())
    torch.manual_seed(0)
    agent = custom_training_loop(env)
    assert isinstance(agent, VMambaTD3Agent) and agent.critic_stream.visual.out_features == 256
    buf = agent.replay_buffer
    assert buf.size == len(buf) == 16  # every step stored, through the 7-argument add
    assert agent.total_it == 16 - 10  # one update per step from learning_starts on
    stored = buf._action[: int(buf._t.sum())][buf._has_action[: int(buf._t.sum())]]
    assert np.all(np.abs(stored) <= 1.0)  # environment-unit actions were scaled into [-1, 1]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["vmamba_td3_0.pth", "vmamba_td3_8.pth"]
    metrics = agent.train()
    assert {"actor_loss", "critic_loss"} <= set(metrics)
    batch = buf.sample(4)
    assert batch.obs["depth"].shape[:2] == (4, 4)


def test_the_design_form_of_add_scales_actions_and_starts_episodes_after_done():
    cfg = make_config("cpu", level="empty", scan_backend="chunked", buffer_size=100, action_repeat=1)
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    obs, _ = env.reset(seed=1)
    high = env.action_space.high
    for t in range(6):
        nxt, r, *_ = env.step(high)
        agent.replay_buffer.add(obs["base"], obs["depth"], high, r, nxt["base"], nxt["depth"], float(t == 2))
        obs = nxt
    buf = agent.replay_buffer
    n = int(buf._t.sum())
    np.testing.assert_allclose(buf._action[:n][buf._has_action[:n]], 1.0)  # the box's top is +1
    starts = np.unique(buf._episode_start[:n][buf._has_action[:n]])
    assert len(starts) == 2  # done at the third step: the fourth begins a new episode
    with pytest.raises(TypeError, match="with dict observations"):
        buf.add(obs["base"], obs["depth"], high, 0.0, obs["base"], obs["depth"])  # the 7th, done, missing


def test_evaluation_and_visualisation_scripts_run_on_a_saved_model(tmp_path):
    env = make_env(get_config())
    agent = make_agent(env, None, get_config())
    path = str(tmp_path / "vmamba_td3_final.pth")
    agent.save(path)
    rewards, lengths = evaluate_model(env, path, num_episodes=2)
    assert len(rewards) == len(lengths) == 2 and all(n >= 1 for n in lengths)
    loaded, weights = attention_weights_of(env, path)
    assert weights.shape == (1, get_config().seq_len)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1))
    # the views are the agent's modules, not copies
    assert loaded.actor_mamba is loaded.actor_stream.mamba
    assert loaded.critic_visual_encoder_target is loaded.critic_stream_target.visual
    v, s, c = feature_evolution(env, path, num_steps=5)
    assert v.shape == (5, 1, 128) and s.shape == (5, 1, get_config().state_feature_dim)
    assert c.shape == (5, 1, loaded.critic_stream.out_features)
