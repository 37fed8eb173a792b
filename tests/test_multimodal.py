"""Per-modality embeddings, MLP fusion and attention fusion (HOPE's network front end)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from vmamba_rl.agents.sac import make_multimodal_encoder
from vmamba_rl.config import make_config
from vmamba_rl.models.multimodal import (
    AttentionFusion,
    MLPFusion,
    MultiHeadSelfAttention,
    VectorEmbedding,
)

TINY = dict(
    embed_size=8,
    fusion_hidden=16,
    attention_heads=2,
    attention_dim_head=4,
    attention_ff_dim=8,
    cnn_channels=[4, 8],
)


def _space(img_chans: int = 3, img: int = 8) -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "lidar": gym.spaces.Box(0, 10, (12,), np.float32),
            "target": gym.spaces.Box(-1, 1, (5,), np.float32),
            "img": gym.spaces.Box(0, 255, (img_chans, img, img), np.uint8),
        }
    )


def _batch(space: gym.spaces.Dict, B: int, K: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in space.spaces.items():
        if s.dtype == np.uint8:
            out[k] = torch.randint(0, 256, (B, K, *s.shape), generator=g, dtype=torch.uint8)
        else:
            out[k] = torch.randn(B, K, *s.shape, generator=g)
    return out


def test_attention_shapes_softmax_rows_and_manual_formula() -> None:
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(dim=8, heads=2, dim_head=4)
    x = torch.randn(3, 5, 8)
    out, w = attn(x)
    assert out.shape == (3, 5, 8) and w.shape == (3, 2, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 5))
    # The document's steps written out once more, head by head.
    q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(-1, -2) / 2.0, dim=-1)  # sqrt(dim_head) = 2
        torch.testing.assert_close(a, w[:, h])
        heads.append(a @ v[..., sl])
    torch.testing.assert_close(out, attn.to_out(torch.cat(heads, dim=-1)))


def test_attention_fusion_shapes_permutation_and_every_token_matters() -> None:
    torch.manual_seed(1)
    fusion = AttentionFusion(n_tokens=4, dim=8, heads=2, dim_head=4, depth=2, ff_dim=8, hidden=16, out_dim=6)
    tokens = torch.randn(5, 4, 8, requires_grad=True)
    out, w = fusion(tokens, return_attention=True)
    assert out.shape == (5, 6) and w.shape == (2, 5, 2, 4, 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5, 2, 4))
    perm = tokens[:, [2, 0, 3, 1]]
    assert not torch.allclose(fusion(perm), out, atol=1e-4)
    out.sum().backward()
    per_token = tokens.grad.abs().sum(dim=(0, 2))
    assert torch.all(per_token > 0), f"a token does not reach the output: {per_token}"
    with pytest.raises(ValueError, match="4 tokens"):
        fusion(torch.randn(5, 3, 8))


def test_mlp_fusion_and_vector_embedding_shapes() -> None:
    assert MLPFusion(24, 16, 7)(torch.randn(3, 24)).shape == (3, 7)
    emb = VectorEmbedding(5, 8)
    assert emb(torch.randn(4, 5)).shape == (4, 8)
    assert isinstance(emb.net[1], torch.nn.Tanh)
    w = emb.net[0].weight  # orthogonal init: rows orthonormal (8 x 5 -> columns orthonormal)
    torch.testing.assert_close(w.T @ w, torch.eye(5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", ["mlp", "attention"])
@pytest.mark.parametrize("K", [1, 3])
def test_encoder_shapes_with_history_and_action(fusion: str, K: int) -> None:
    torch.manual_seed(2)
    cfg = make_config(fusion=fusion, **TINY)
    space = _space()
    obs = _batch(space, B=4, K=K)
    enc = make_multimodal_encoder(cfg, space, history=K)
    assert enc(obs).shape == (4, 16)
    critic_enc = make_multimodal_encoder(cfg, space, history=K, action_dim=2)
    out = critic_enc(obs, torch.rand(4, 2) * 2 - 1)
    assert out.shape == (4, 16)
    if fusion == "attention":
        assert critic_enc.token_names == ["img", "lidar", "target", "action"]
        feat, w = enc(obs, return_attention=True)
        assert w.shape == (1, 4, 2, 3, 3)
    else:
        assert critic_enc.fusion.net[0].in_features == 3 * 8 + 2  # action concatenated raw
        with pytest.raises(ValueError, match="attention"):
            enc(obs, return_attention=True)
    with pytest.raises(ValueError, match="action"):
        critic_enc(obs)
    bad = dict(obs, lidar=torch.randn(4, K + 1, 12))
    with pytest.raises(ValueError, match="lidar"):
        enc(bad)


def test_encoder_history_changes_output_and_uint8_equals_scaled_float() -> None:
    torch.manual_seed(3)
    cfg = make_config(fusion="attention", **TINY)
    space = _space()
    enc = make_multimodal_encoder(cfg, space, history=2)
    obs = _batch(space, B=2, K=2)
    base = enc(obs)
    older = dict(obs, lidar=obs["lidar"].clone())
    older["lidar"][:, 0] += 1.0  # change only the older step: history is read
    assert not torch.allclose(enc(older), base)
    as_float = dict(obs, img=obs["img"].float() / 255.0)
    torch.testing.assert_close(enc(as_float), base)


def test_dronenav_like_space_with_vmamba_image_encoder() -> None:
    pytest.importorskip("vmamba_rl.models.vmamba")
    torch.manual_seed(4)
    cfg = make_config(
        "cpu", image_encoder="vmamba", fusion="attention", vmamba_hidden_dim=8, vmamba_num_heads=1, **TINY
    )
    space = gym.spaces.Dict(
        {
            "base": gym.spaces.Box(-np.inf, np.inf, (10,), np.float32),
            "depth": gym.spaces.Box(0, 255, (1, 64, 64), np.uint8),
        }
    )
    enc = make_multimodal_encoder(cfg, space, history=2)
    assert type(enc.embeddings["depth"]).__name__ == "VMambaVisualEncoder"
    assert enc(_batch(space, B=2, K=2)).shape == (2, 16)
