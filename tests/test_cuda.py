"""CUDA paths: the scan on the GPU, mixed precision, gradient checkpointing, GPU-trained checkpoints.

These need a CUDA GPU and are skipped without one (CI has none); they ran on an H200
(docs/benchmarks.md, "GPU first look").
Each ties the GPU result to the CPU result or to the fp32 result of the same computation.
"""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import TINY_SAC, tiny_config
from vmamba_rl.agents import make_agent
from vmamba_rl.agents.vmamba_td3 import VMambaTD3Agent
from vmamba_rl.cli import main
from vmamba_rl.models.vmamba import VMambaRLTiny
from vmamba_rl.ops.selective_scan import selective_scan_fn
from vmamba_rl.training import last_frames, make_env

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32():
    # cuDNN convolutions default to TF32 on Ampere and later (10-bit mantissa): compare full fp32
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


CUDA = torch.device("cuda")
ACTION_SPACE = gym.spaces.Box(np.array([0, -0.5, -0.3], np.float32), np.array([2, 0.5, 0.3], np.float32))


def _scan_inputs(Bt=2, D=32, L=64, N=16, G=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bt, D, L, generator=g)
    delta = torch.randn(Bt, D, L, generator=g) * 0.5
    A = -torch.exp(torch.randn(D, N, generator=g) * 0.5)
    B = torch.randn(Bt, G, N, L, generator=g)
    C = torch.randn(Bt, G, N, L, generator=g)
    Dskip = torch.randn(D, generator=g)
    bias = torch.randn(D, generator=g) * 0.1
    return [u, delta, A, B, C, Dskip, bias]


@pytest.mark.parametrize("backend", ["chunked", "triton"])
@pytest.mark.parametrize("N", [1, 16])
def test_gpu_scan_matches_cpu_kernel_values_and_grads(N, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    cpu_in = [t.clone().requires_grad_(True) for t in _scan_inputs(N=N, L=100)]
    gpu_in = [t.detach().to(CUDA).requires_grad_(True) for t in cpu_in]
    y_cpu = selective_scan_fn(*cpu_in, delta_softplus=True, backend="auto")  # numba kernel
    y_gpu = selective_scan_fn(*gpu_in, delta_softplus=True, backend=backend)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu.detach(), rtol=1e-4, atol=1e-4)
    w = torch.randn_like(y_cpu)
    (y_cpu * w).sum().backward()
    (y_gpu * w.to(CUDA)).sum().backward()
    for name, a, b in zip("u delta A B C D bias".split(), cpu_in, gpu_in, strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=2e-3, atol=2e-3, msg=name)


@pytest.mark.parametrize("backend", ["chunked", "triton"])
def test_gpu_scan_under_bf16_autocast_stays_close_to_fp32(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    x = [t.to(CUDA) for t in _scan_inputs()]
    ref = selective_scan_fn(*x, backend="chunked")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = selective_scan_fn(*[t.bfloat16() if t.dim() == 3 else t for t in x], backend=backend)
    assert torch.isfinite(y).all()
    rel = (y.float() - ref).norm() / ref.norm()
    assert rel < 2e-2, float(rel)  # bf16 has 8 bits of mantissa: ~0.4% per rounding


@pytest.mark.parametrize("preset", ["cpu", "light"])
def test_encoder_on_gpu_equals_encoder_on_cpu(preset):
    cfg = tiny_config() if preset == "cpu" else tiny_config(vmamba_hidden_dim=16, vmamba_ssm_d_state=16)
    torch.manual_seed(0)
    enc = VMambaRLTiny(1, out_features=cfg.feature_dim, **cfg.vmamba.backbone_kwargs()).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        ref = enc(x)
        got = copy.deepcopy(enc).to(CUDA)(x.to(CUDA))
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_on_gpu_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = tiny_config(vmamba_drop_path_rate=0.0)
    plain = VMambaRLTiny(1, out_features=cfg.feature_dim, **cfg.vmamba.backbone_kwargs()).to(CUDA)
    ckpt = copy.deepcopy(plain)
    ckpt.use_checkpoint = True
    x = torch.rand(4, 1, 64, 64, device=CUDA)
    plain(x).square().sum().backward()
    ckpt(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


def _batch(B=8, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "base": torch.randn(B, K + 1, 10, generator=g).to(CUDA),
        "depth": torch.randint(0, 256, (B, K + 1, 1, 64, 64), generator=g, dtype=torch.uint8).to(CUDA),
        "action": (torch.rand(B, 3, generator=g) * 2 - 1).to(CUDA),
        "reward": torch.randn(B, 1, generator=g).to(CUDA),
        "terminated": torch.zeros(B, 1, device=CUDA),
    }


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_td3_update_with_mixed_precision_tracks_fp32(amp):
    def agent(a):
        torch.manual_seed(0)
        return VMambaTD3Agent(10, (1, 64, 64), ACTION_SPACE, tiny_config(amp=a, device="cuda"), device="cuda")

    ref, low = agent("off"), agent(amp)
    assert low.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert low.scaler_amp.is_enabled() == (amp == "fp16")  # fp16 needs loss scaling, bf16 does not
    before = {k: v.clone() for k, v in low.critic.state_dict().items()}
    for i in range(4):  # two actor updates (policy_freq 2)
        m_ref, m_low = ref.update(_batch(seed=i)), low.update(_batch(seed=i))
        # actor_loss is NaN until the first delayed actor update (update 2)
        assert all(np.isfinite(v) for k, v in m_low.items() if k != "actor_loss" or i >= 1), m_low
        assert m_low["critic_loss"] == pytest.approx(m_ref["critic_loss"], rel=0.05)
    assert any(not torch.equal(before[k], v) for k, v in low.critic.state_dict().items())
    for p in low.critic.parameters():  # master weights stay fp32 under autocast
        assert p.dtype == torch.float32
    a_ref = ref.select_action(np.zeros((3, 10), np.float32), np.zeros((3, 1, 64, 64), np.uint8), noise=False)
    a_low = low.select_action(np.zeros((3, 10), np.float32), np.zeros((3, 1, 64, 64), np.uint8), noise=False)
    np.testing.assert_allclose(a_low, a_ref, atol=0.05)


def test_gpu_trained_run_resumes_and_evaluates_on_cpu(tmp_path, capsys):
    common = [
        "--preset", "cpu", "--level", "empty", "--learning_starts", "30", "--batch_size", "8",
        "--seq_len", "2", "--vmamba_hidden_dim", "8", "--feature_dim", "16", "--state_feature_dim", "8",
        "--hidden_dim", "16", "--eval_interval", "0", "--eval_episodes", "2", "--save_interval", "40",
        "--log_dir", str(tmp_path), "--run_name", "g", "--no-progress", "--env_kwargs",
        '{"max_steps": 30}',
    ]  # fmt: skip
    assert main(["train", *common, "--max_timesteps", "60", "--device", "cuda", "--amp", "bf16"]) == 0
    run = tmp_path / "g"
    assert json.loads((run / "config.json").read_text())["train"]["amp"] == "bf16"
    # the checkpoint's tensors load onto the CPU: evaluation and resuming need no GPU
    assert main(["eval", "--checkpoint", str(run), "--episodes", "2", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["episodes"] == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max_timesteps", "90", "--device", "cuda"]) == 0


def test_sac_updates_on_gpu():
    cfg = tiny_config(algorithm_name="hope_sac", **{**TINY_SAC, "device": "cuda"})
    env = make_env(cfg)
    agent = make_agent(env, None, cfg)
    assert next(agent.actor.parameters()).is_cuda
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        a = agent.act(obs)
        nxt, r, te, tr, _ = env.step(a)
        agent.store_transition(last_frames(obs), a, r, last_frames(nxt), te, tr)
        obs = nxt if not (te or tr) else env.reset()[0]
    m = agent.train()
    assert m is not None and all(np.isfinite(v) for v in m.values()), m
