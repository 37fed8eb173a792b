"""TD3 maths of VMambaTD3Agent against hand computations on tiny networks."""

from __future__ import annotations

import dataclasses

import gymnasium as gym  # noqa: I001
import numpy as np
import pytest
import torch

from conftest import tiny_config
from vmamba_rl.agents import make_agent
from vmamba_rl.agents.base import ActionScaler, NonFiniteError
from vmamba_rl.agents.td3 import TD3Agent
from vmamba_rl.agents.vmamba_td3 import VMambaTD3Agent
from vmamba_rl.checkpoint import CheckpointError
from vmamba_rl.config import ConfigError
from vmamba_rl.replay import ReplayBatch
from vmamba_rl.training import make_env

ACTION_SPACE = gym.spaces.Box(np.array([0, -0.5, -0.3], np.float32), np.array([2, 0.5, 0.3], np.float32))


def make(algo=VMambaTD3Agent, **kw):
    cfg = tiny_config(scan_backend="chunked", **kw)
    return algo(10, (1, 64, 64), ACTION_SPACE, cfg, device="cpu")


def batch(B=4, K=3, seed=0, terminated=None):
    g = torch.Generator().manual_seed(seed)
    return {
        "base": torch.randn(B, K + 1, 10, generator=g),
        "depth": torch.randint(0, 256, (B, K + 1, 1, 64, 64), generator=g, dtype=torch.uint8),
        "action": torch.rand(B, 3, generator=g) * 2 - 1,
        "reward": torch.randn(B, 1, generator=g),
        "terminated": (
            torch.tensor(terminated, dtype=torch.float32).view(-1, 1)
            if terminated is not None
            else torch.zeros(B, 1)
        ),
    }


def as_tensors(agent: VMambaTD3Agent, b: dict) -> dict[str, torch.Tensor]:
    """A window batch from :func:`batch` in the layout ``update`` reads (every frame distinct)."""
    windows = {"base": b["base"].numpy(), "depth": b["depth"].numpy()}
    return agent.batch_to_tensors(
        ReplayBatch.from_windows(windows, b["action"].numpy(), b["reward"].numpy(), b["terminated"].numpy())
    )


def test_action_scaling_per_dimension():
    sc = ActionScaler(ACTION_SPACE)
    assert np.allclose(sc.to_env(np.array([-1, -1, -1])), [0, -0.5, -0.3])
    assert np.allclose(sc.to_env(np.array([1, 0, 1])), [2, 0, 0.3])
    a = np.array([0.7, 0.1, -0.2], np.float32)
    assert np.allclose(sc.to_norm(sc.to_env(a)), a, atol=1e-6)


def test_target_is_clipped_double_q_without_bootstrap_on_termination():
    agent = make(policy_noise=0.0)
    b = batch(terminated=[0, 1, 0, 1])
    nb, nd = b["base"][:, 1:], b["depth"][:, 1:]
    y = agent.compute_target(nb, nd, b["reward"], b["terminated"])
    with torch.no_grad():
        s_c = agent.critic_stream_target(nb, nd)
        s_a = agent.actor_stream_target(nb, nd)
        a = agent.actor_target(s_a)
        q1, q2 = agent.critic_target(s_c, a)
        expect = b["reward"] + 0.99 * (1 - b["terminated"]) * torch.minimum(q1, q2)
    assert torch.allclose(y, expect, atol=1e-6)
    assert torch.allclose(y[[1, 3]], b["reward"][[1, 3]])  # terminal rows: reward only
    # n-step samples carry their own discount gamma^m per row
    disc = torch.tensor([[0.99], [0.9801], [0.970299], [0.5]])
    y_n = agent.compute_target(nb, nd, b["reward"], b["terminated"], discount=disc)
    expect_n = b["reward"] + disc * (1 - b["terminated"]) * torch.minimum(q1, q2)
    assert torch.allclose(y_n, expect_n, atol=1e-6)


def test_critic_target_mean_averages_the_two_target_critics():
    agent = make(policy_noise=0.0, critic_target="mean")
    b = batch(terminated=[0, 1, 0, 0])
    nb, nd = b["base"][:, 1:], b["depth"][:, 1:]
    y = agent.compute_target(nb, nd, b["reward"], b["terminated"])
    with torch.no_grad():
        q1, q2 = agent.critic_target(agent.critic_stream_target(nb, nd), agent.actor_target(
            agent.actor_stream_target(nb, nd)))  # fmt: skip
    assert not torch.allclose(q1, q2)  # otherwise mean and min agree and this test cannot fail
    expect = b["reward"] + 0.99 * (1 - b["terminated"]) * (q1 + q2) / 2
    assert torch.allclose(y, expect, atol=1e-6)


def test_target_policy_smoothing_is_clipped():
    agent = make(policy_noise=10.0, noise_clip=0.05)
    b = batch()
    nb, nd = b["base"][:, 1:], b["depth"][:, 1:]
    with torch.no_grad():
        s_c = agent.critic_stream_target(nb, nd)
        a = agent.actor_target(agent.actor_stream_target(nb, nd))
        lo, hi = (a - 0.05).clamp(-1, 1), (a + 0.05).clamp(-1, 1)
    seen = []
    for _ in range(5):
        y = agent.compute_target(nb, nd, b["reward"], b["terminated"])
        seen.append(y)
    # with huge noise the clipped action sits at a +-0.05 corner; the target must match one of those Qs
    with torch.no_grad():
        corners = []
        for sign in torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * 3):
            act = torch.where(sign > 0, hi, lo)
            q1, q2 = agent.critic_target(s_c, act)
            corners.append(b["reward"] + 0.99 * torch.minimum(q1, q2))
        corners = torch.stack(corners)  # (8, B, 1)
    for y in seen:
        assert torch.all((corners - y).abs().min(0).values < 1e-5)


def test_delayed_actor_and_exact_soft_update():
    agent = make(policy_freq=2, tau=0.25)
    b = batch()
    actor0 = [p.clone() for p in agent.actor.parameters()]
    tgt0 = [p.clone() for p in agent.actor_target.parameters()]
    ctgt0 = [p.clone() for p in agent.critic_target.parameters()]
    m1 = agent.update(as_tensors(agent, b))
    assert all(torch.equal(a, p) for a, p in zip(actor0, agent.actor.parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(tgt0, agent.actor_target.parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(ctgt0, agent.critic_target.parameters(), strict=True))
    assert np.isnan(m1["actor_loss"])
    critic_before_actor = [p.clone() for p in agent.critic.parameters()]
    agent.update(as_tensors(agent, b))
    assert any(not torch.equal(a, p) for a, p in zip(actor0, agent.actor.parameters(), strict=True))
    for t0, t1, online in zip(tgt0, agent.actor_target.parameters(), agent.actor.parameters(), strict=True):
        assert torch.allclose(t1, 0.75 * t0 + 0.25 * online, atol=1e-6)
    # the critic changed only through its own (second) update, never through the actor loss: a copy of
    # the agent before the second update that runs the critic step alone ends with the same critic
    assert any(
        not torch.equal(a, p) for a, p in zip(critic_before_actor, agent.critic.parameters(), strict=True)
    )
    ref = make(policy_freq=2, tau=0.25)
    ref.update(as_tensors(ref, b))  # the same first update (same seed, same batch)
    ref.policy_freq = 10**9  # the second update: critic step only, no actor step
    ref.update(as_tensors(ref, b))
    for a, p in zip(ref.critic.parameters(), agent.critic.parameters(), strict=True):
        torch.testing.assert_close(a, p, rtol=0, atol=0)


def test_actor_update_leaves_critic_untouched():
    agent = make(policy_freq=1)
    b = batch()
    K = 3
    state = agent.critic_stream(b["base"][:, :K], b["depth"][:, :K]).detach()
    critic0 = [p.clone() for p in agent.critic.parameters()]
    stream0 = [p.clone() for p in agent.critic_stream.parameters()]
    agent._update_actor(b["base"][:, :K], b["depth"][:, :K], state)
    assert all(torch.equal(a, p) for a, p in zip(critic0, agent.critic.parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(stream0, agent.critic_stream.parameters(), strict=True))
    assert all(p.requires_grad for p in agent.critic.parameters())


def test_nan_loss_raises_naming_metric():
    agent = make()
    b = batch()
    b["reward"][0] = float("nan")
    with pytest.raises(NonFiniteError, match="critic_loss"):
        agent.update(as_tensors(agent, b))


def test_select_action_scaled_and_noise_decays():
    agent = make()
    base, depth = np.zeros((3, 10), np.float32), np.zeros((3, 1, 64, 64), np.uint8)
    a = agent.select_action(base, depth, noise=False)
    assert a.shape == (3,) and np.all(a >= ACTION_SPACE.low) and np.all(a <= ACTION_SPACE.high)
    assert np.allclose(a, agent.select_action(base, depth, noise=False))
    agent.ou_noise.scale_sigma(1.0)
    assert agent.ou_noise.sigma == pytest.approx(0.01)


def test_share_encoder_ablation_has_one_stream():
    agent = make(share_encoder=True)
    assert agent.actor_stream is None and "actor_stream" not in agent.modules()
    stream0 = [p.clone() for p in agent.critic_stream.parameters()]
    b = batch()
    K = 3
    state = agent.critic_stream(b["base"][:, :K], b["depth"][:, :K]).detach()
    agent._update_actor(b["base"][:, :K], b["depth"][:, :K], state)
    # the actor reads detached features: the shared encoder is trained by the critic only
    assert all(torch.equal(a, p) for a, p in zip(stream0, agent.critic_stream.parameters(), strict=True))


def test_save_load_same_actions_and_mismatch_errors(tmp_path):
    agent = make()
    agent.update(as_tensors(agent, batch()))
    path = tmp_path / "a.pt"
    agent.save(str(path))
    other = make()
    other.load(str(path))
    base, depth = (
        np.random.rand(3, 10).astype(np.float32),
        np.random.randint(0, 255, (3, 1, 64, 64), np.uint8),
    )
    assert np.array_equal(agent.select_action(base, depth, False), other.select_action(base, depth, False))
    with pytest.raises(CheckpointError, match="holds a 'vmamba_td3' agent, but this agent is 'td3'"):
        make(TD3Agent).load(str(path))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        make(hidden_dim=32).load(str(path))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        other.load(str(tmp_path / "bad.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a vmamba-rl checkpoint"):
        other.load(str(tmp_path / "foreign.pt"))


def test_make_agent_from_env_and_unknown_algorithm():
    cfg = tiny_config(algorithm_name="td3")
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    assert isinstance(agent, TD3Agent)
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(agent.act(obs, explore=True))


@pytest.mark.parametrize("algo", [VMambaTD3Agent, TD3Agent])
@pytest.mark.parametrize("bucket", [1, 16])
def test_distinct_frame_encoding_equals_window_encoding(algo, bucket):
    """A replay sample with shared frames: encoding each distinct frame once (frame_ids) gives the same
    update as encoding every window position, and encodes fewer frames. ``bucket`` 16 pads the distinct
    frames to a multiple of 16 as the agent does on a GPU (32 there)."""
    env = make_env(tiny_config(level="empty"))
    kw = dict(replay_segment=8, batch_size=16, policy_freq=1, seq_len=3, scan_backend="chunked")
    agents = [make_agent(env, None, tiny_config(algorithm_name=algo.algorithm, **kw)) for _ in range(2)]
    agents[1].load_state_dict(agents[0].state_dict())
    agents[0].frame_bucket = bucket
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    from vmamba_rl.training import last_frames

    for _ in range(60):
        a = env.action_space.sample()
        nobs, r, te, tr, _ = env.step(a)
        agents[0].store_transition(last_frames(obs), a, r, last_frames(nobs), te, tr)
        obs = nobs if not (te or tr) else env.reset()[0]
    sample = agents[0].replay_buffer.sample(16)
    deduped = agents[0].batch_to_tensors(sample)
    # the same sample with every window position named a frame of its own: nothing shared
    ids = np.arange(16 * 6).reshape(16, 6)
    plain_sample = dataclasses.replace(sample, frame_ids=ids[:, :3], next_frame_ids=ids[:, 3:])
    plain = agents[1].batch_to_tensors(plain_sample)
    assert plain["depth_state"].shape[0] == 16 * 3
    distinct = int(deduped["index_state"].max()) + 1
    assert distinct < 16 * 3 / 2  # runs of 8 share most frames
    assert deduped["depth_state"].shape[0] == -(-distinct // bucket) * bucket
    state, nxt = torch.as_tensor(sample.obs["depth"]), torch.as_tensor(sample.next_obs["depth"])
    torch.testing.assert_close(plain["depth_state"][plain["index_state"]], state, rtol=0, atol=0)
    torch.testing.assert_close(plain["depth_next"][plain["index_next"]], nxt, rtol=0, atol=0)
    torch.testing.assert_close(deduped["depth_state"][deduped["index_state"]], state, rtol=0, atol=0)
    torch.testing.assert_close(deduped["depth_next"][deduped["index_next"]], nxt, rtol=0, atol=0)
    m0, m1 = agents[0].update(deduped), agents[1].update(plain)
    for key in ("critic_loss", "q1", "target_q", "actor_loss"):
        assert m0[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-5), key
    for (name, p0), p1 in zip(agents[0].actor.named_parameters(), agents[1].actor.parameters(), strict=True):
        torch.testing.assert_close(p0, p1, rtol=1e-4, atol=1e-5, msg=name)


def test_base_normalisation_is_opt_in_updated_on_storage_and_checkpointed(tmp_path):
    assert make().normalizer is None  # the spec feeds the base vector raw
    agent = make(normalize_base=True, seq_len=2)
    rng = np.random.default_rng(0)
    raw = [rng.normal(5.0, 3.0, 10).astype(np.float32) for _ in range(30)]
    depth = np.zeros((1, 64, 64), np.uint8)
    for i in range(29):
        obs, nxt = {"base": raw[i], "depth": depth}, {"base": raw[i + 1], "depth": depth}
        agent.store_transition(obs, np.ones(3, np.float32), 0.0, nxt, False, False)
    stats = agent.normalizer.rms["base"]
    assert stats.count == 29
    np.testing.assert_allclose(stats.mean, np.mean(raw[:29], axis=0), rtol=1e-5)
    sample = agent.replay_buffer.sample(8)
    b = agent.batch_to_tensors(sample)
    expect = (sample.obs["base"] - stats.mean) / (np.sqrt(stats.var) + 1e-8)
    np.testing.assert_allclose(b["base"].numpy(), expect, rtol=1e-4, atol=1e-5)
    path = tmp_path / "n.pt"
    agent.save(str(path))
    other = make(normalize_base=True, seq_len=2)
    other.load(str(path))
    assert other.normalizer.rms["base"].count == 29
    seq = np.stack(raw[:2])
    d2 = np.zeros((2, 1, 64, 64), np.uint8)
    assert np.array_equal(agent.select_action(seq, d2, False), other.select_action(seq, d2, False))
    # acting reads normalised inputs: raw and normalising agents with equal weights act differently
    plain = make(seq_len=2)
    plain.load_state_dict({k: v for k, v in agent.state_dict().items() if k != "extra"})
    assert not np.array_equal(plain.select_action(seq, d2, False), agent.select_action(seq, d2, False))


def test_actor_reg_adds_the_pre_tanh_penalty_to_the_actor_loss():
    K = 3
    losses = {}
    for reg in (0.0, 0.5):
        agent = make(policy_freq=1, actor_reg=reg)
        b = batch()
        with torch.no_grad():
            state_c = agent.critic_stream(b["base"][:, :K], b["depth"][:, :K])
            pre = agent.actor.net(agent.actor_stream(b["base"][:, :K], b["depth"][:, :K]))
            q = agent.critic.Q1(state_c, torch.tanh(pre)).mean()
        agent._update_actor(b["base"][:, :K], b["depth"][:, :K], state_c)
        losses[reg] = agent._last_actor_loss
        assert agent._last_actor_loss == pytest.approx(float(-q + reg * pre.pow(2).mean()), rel=1e-5)
    assert losses[0.5] > losses[0.0]


@pytest.mark.parametrize("share_encoder", [True, False])
def test_encoder_lr_gives_the_visual_encoders_their_own_learning_rate(share_encoder):
    plain = make(share_encoder=share_encoder)
    assert [len(o.param_groups) for o in plain.optimizers().values()] == [1, 1]  # default: as before
    agent = make(share_encoder=share_encoder, encoder_lr=2e-5, critic_lr=1e-3, actor_lr=5e-4)
    sides = {"critic": (agent.critic_stream, 1e-3), "actor": (agent.actor_stream, 5e-4)}
    for side, opt in agent.optimizers().items():
        stream, lr = sides[side]
        if stream is None:  # shared encoder: the actor trains only its head
            assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == lr
            continue
        rest, visual = opt.param_groups
        assert rest["lr"] == lr and visual["lr"] == 2e-5
        assert {id(p) for p in visual["params"]} == {id(p) for p in stream.visual.parameters()}
        head = agent.critic if side == "critic" else agent.actor
        every = {id(p) for p in head.parameters()} | {id(p) for p in stream.parameters()}
        got = [id(p) for g in opt.param_groups for p in g["params"]]
        assert len(got) == len(set(got)) and set(got) == every  # each parameter exactly once


def test_update_reports_how_much_the_visual_features_vary():
    from vmamba_rl.agents.td3 import visual_spread

    assert visual_spread(torch.ones(5, 4)) == 0.0  # collapsed: every frame the same features
    f = torch.tensor([[1.0, -1.0], [3.0, 1.0]])
    assert visual_spread(f) == pytest.approx(float(f.std(0).mean() / f.abs().mean()))
    agent = make()
    assert agent.update(as_tensors(agent, batch()))["visual_spread"] > 0.0


@pytest.mark.parametrize("share_encoder", [True, False])
def test_explore_candidates_act_on_the_highest_q1_of_actor_and_uniform_actions(share_encoder):
    agent = make(explore_candidates=8, share_encoder=share_encoder)
    g = np.random.default_rng(0)
    obs = {"base": g.standard_normal((5, 3, 10)).astype(np.float32),
           "depth": g.integers(0, 256, (5, 3, 1, 64, 64), dtype=np.uint8)}  # fmt: skip
    gen_state = agent._candidate_gen.get_state()
    acted = agent.scaler.to_norm(agent.act_batch(obs, explore=True, noise=np.zeros((5, 3))))
    # the candidates again, from the same generator state, scored by hand
    agent._candidate_gen.set_state(gen_state)
    uniform = torch.rand((5, 8, 3), generator=agent._candidate_gen) * 2 - 1
    with torch.no_grad():
        base, depth = torch.as_tensor(obs["base"]), torch.as_tensor(obs["depth"])
        actor_action = agent.actor(agent._streams_for_actor()(base, depth))
        cands = torch.cat([actor_action[:, None], uniform], dim=1)
        ctx = agent.critic_stream(base, depth)
        q = torch.stack([agent.critic.Q1(ctx, cands[:, j]) for j in range(9)], dim=1)[..., 0]
    expect = cands[torch.arange(5), q.argmax(1)].numpy()
    np.testing.assert_allclose(acted, expect, atol=1e-5)
    assert (q.argmax(1) > 0).any()  # some row prefers a uniform action, or the test could not fail
    # evaluation acts with the actor alone
    np.testing.assert_allclose(
        agent.scaler.to_norm(agent.act_batch(obs, explore=False)), actor_action.numpy(), atol=1e-5
    )


def test_actor_candidates_pull_the_actor_toward_the_highest_q1_candidate():
    K, B, M, coef = 3, 16, 8, 2.0
    agent = make(policy_freq=1, actor_candidates=M, actor_candidate_coef=coef)
    b = batch(B=B)
    base, depth = b["base"][:, :K], b["depth"][:, :K]
    gen_state = agent._actor_candidate_gen.get_state()
    with torch.no_grad():
        state_c = agent.critic_stream(base, depth)
        a = torch.tanh(agent.actor.net(agent.actor_stream(base, depth)))
        # the candidates again, from the same generator state, scored by hand
        uniform = torch.rand((B, M, 3), generator=torch.Generator().set_state(gen_state)) * 2 - 1
        cands = torch.cat([a[:, None], uniform], dim=1)
        q = torch.stack([agent.critic.Q1(state_c, cands[:, j]) for j in range(M + 1)], dim=1)[..., 0]
        best, won = cands[torch.arange(B), q.argmax(1)], q.argmax(1) > 0
        pull = ((a - best).pow(2).sum(-1) * won).mean()
        expect = -agent.critic.Q1(state_c, a).mean() + coef * pull
    metrics = agent._update_actor(base, depth, state_c)
    assert won.any() and pull > 0  # some state prefers a uniform action, or the test could not fail
    assert agent._last_actor_loss == pytest.approx(float(expect), rel=1e-5)
    assert metrics["actor_candidate_wins"] == pytest.approx(float(won.float().mean()))
    # the step moves the actor toward the winning candidates
    with torch.no_grad():
        after = torch.tanh(agent.actor.net(agent.actor_stream(base, depth)))
    assert ((after - best).pow(2).sum(-1)[won]).mean() < ((a - best).pow(2).sum(-1)[won]).mean()


def test_actor_candidates_are_off_by_default_and_checked():
    agent = make(policy_freq=1)
    b = batch()
    with torch.no_grad():
        state_c = agent.critic_stream(b["base"][:, :3], b["depth"][:, :3])
    assert "actor_candidate_wins" not in agent._update_actor(b["base"][:, :3], b["depth"][:, :3], state_c)
    with pytest.raises(ConfigError, match="--actor_candidates must be >= 0.*got -2"):
        tiny_config(actor_candidates=-2)
    with pytest.raises(ConfigError, match="--actor_candidate_coef must be a finite weight >= 0, got -1.0"):
        tiny_config(actor_candidate_coef=-1.0)


def test_explore_candidates_must_not_be_negative():
    with pytest.raises(ConfigError, match="--explore_candidates must be >= 0.*got -1"):
        tiny_config(explore_candidates=-1)
