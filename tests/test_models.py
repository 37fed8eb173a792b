"""Shapes of the spec's data-flow table, attention, temporal (non-)causality, checkpointing, init."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_config
from vmamba_rl.agents.td3 import make_stream
from vmamba_rl.config import make_config
from vmamba_rl.models.cnn import CNNVisualEncoder
from vmamba_rl.models.heads import Actor, Critic
from vmamba_rl.models.sequence import (
    CrossAttention,
    EncoderStream,
    FusionMLP,
    MambaSequenceEncoder,
    StateMLP,
    TemporalMamba,
    TemporalMambaBlock,
)
from vmamba_rl.models.vmamba import (
    SS2D,
    DownsampleV3,
    PatchPartition,
    VMambaRLTiny,
    VMambaVisualEncoder,
    VSSBlock,
)

# Tiny sizes keep the reference backend usable; the layer logic is the same at every size.
TINY = dict(
    vmamba_hidden_dim=8,
    vmamba_num_vss_blocks=[1, 1, 1, 1],
    vmamba_ssm_d_state=2,
    vmamba_ssm_ratio=1.0,
    vmamba_mlp_ratio=2.0,
    feature_dim=16,
    state_feature_dim=8,
    hidden_dim=16,
    vmamba_num_heads=2,
    scan_backend="reference",
    vmamba_drop_path_rate=0.0,
)


def _visual(cfg) -> VMambaVisualEncoder:
    """The encoder of one (1, 64, 64) depth frame that ``cfg`` describes."""
    return VMambaVisualEncoder(1, (64, 64), cfg.feature_dim, **cfg.vmamba.backbone_kwargs())


def tiny_cfg(**kw):
    return make_config(None, **(TINY | kw))


def test_patch_partition_and_downsample_shapes():
    x = torch.randn(3, 1, 64, 64)
    assert PatchPartition(1, 8, 4)(x).shape == (3, 16, 16, 8)
    assert PatchPartition(1, 8, 8)(x).shape == (3, 8, 8, 8)
    assert PatchPartition(1, 8, 1)(x).shape == (3, 64, 64, 8)
    assert DownsampleV3(8)(torch.randn(3, 16, 16, 8)).shape == (3, 8, 8, 16)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_patch_partition_channels_last_path_equals_plain_layers(in_chans):
    """On CPU the stem runs channels-last with the numba LayerNorm; it must compute exactly the stack of
    stride-2 convs, channel LayerNorms and GELUs written with plain NCHW F.conv2d / F.layer_norm, values
    and gradients (input and every parameter)."""
    F = torch.nn.functional
    torch.manual_seed(5)
    stem = PatchPartition(in_chans, 8, 8).double()
    for p in stem.parameters():
        torch.nn.init.normal_(p)
    convs = [m for m in stem.proj if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in stem.proj if isinstance(m, torch.nn.LayerNorm)]

    def plain(h):
        for i, conv in enumerate(convs):
            h = F.conv2d(h, conv.weight, conv.bias, 2, 1)
            if i < len(convs) - 1:
                h = F.layer_norm(h.permute(0, 2, 3, 1), (h.shape[1],), norms[i].weight, norms[i].bias)
                h = F.gelu(h).permute(0, 3, 1, 2)
        return F.layer_norm(h.permute(0, 2, 3, 1), (8,), stem.norm.weight, stem.norm.bias)

    x = torch.rand(9, in_chans, 64, 64, dtype=torch.float64, requires_grad=True)  # 9 x 32 x 32 rows
    params = [x, *stem.parameters()]
    out, ref = stem(x), plain(x)
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9)
    grads = torch.autograd.grad(out.square().sum(), params)
    grads_ref = torch.autograd.grad(ref.square().sum(), params)
    for g, gr in zip(grads, grads_ref, strict=True):
        assert torch.allclose(g, gr, rtol=1e-8, atol=1e-8)


def test_ss2d_and_vssblock_keep_shape():
    x = torch.randn(2, 5, 7, 8)  # odd, non-square grid
    assert SS2D(8, d_state=2, backend="reference")(x).shape == x.shape
    assert VSSBlock(8, d_state=2, layer_scale_init=1e-6, backend="reference")(x).shape == x.shape


def test_ss2d_init_follows_mamba():
    op = SS2D(32, d_state=16)
    A = -torch.exp(op.A_logs)
    assert torch.allclose(A[0], -torch.arange(1, 17, dtype=torch.float32))
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert torch.all(op.Ds == 1)
    assert op.dt_rank == math.ceil(32 / 16)
    assert op.dt_projs_weight.abs().max() <= op.dt_rank**-0.5


def test_vmamba_backbone_stage_resolutions():
    cfg = tiny_cfg()
    m = VMambaRLTiny(1, (64, 64), out_features=cfg.feature_dim, **cfg.vmamba.backbone_kwargs())
    x = m.patch_embed(torch.randn(2, 1, 64, 64))
    sizes = []
    for stage, down in zip(m.stages, m.downsamples, strict=True):
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
        x = down(x)
    # spec: H/4 x hidden, H/8 x 2h, H/16 x 4h, H/32 x 8h
    assert sizes == [(16, 16, 8), (8, 8, 16), (4, 4, 32), (2, 2, 64)]
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 16)


def test_bad_image_size_names_valid_sizes():
    cfg = tiny_cfg()
    with pytest.raises(ValueError, match=r"multiples of 8\*patch_size = 32.*\[32, 64, 96"):
        VMambaRLTiny(1, (48, 64), out_features=cfg.feature_dim, **cfg.vmamba.backbone_kwargs())


@pytest.mark.parametrize("K", [1, 4, 8])
@pytest.mark.parametrize("B", [1, 3])
def test_stream_shapes_follow_spec(K, B):
    cfg = tiny_cfg()
    stream = make_stream(cfg, "vmamba", 10, (1, 64, 64))
    base = torch.randn(B, K, 10)
    depth = torch.randint(0, 256, (B, K, 1, 64, 64), dtype=torch.uint8)
    out = stream(base, depth, return_all=True)
    assert out["visual"].shape == (B, K, 16)
    assert out["state"].shape == (B, K, 8)
    assert out["context"].shape == (B, 16)
    assert out["attention"].shape == (B, K)
    assert torch.allclose(out["attention"].sum(-1), torch.ones(B), atol=1e-6)
    ctx = stream(base, depth)
    assert torch.allclose(ctx, out["context"], atol=1e-6)
    actor, critic = Actor(16, 3, 32), Critic(16, 3, 32)
    a = actor(ctx)
    assert a.shape == (B, 3) and a.abs().max() <= 1
    q1, q2 = critic(ctx, a)
    assert q1.shape == q2.shape == (B, 1)
    assert torch.allclose(critic.Q1(ctx, a), q1)


def test_base_skip_appends_the_newest_base_vector_to_the_context():

    cfg = tiny_config(scan_backend="reference")
    torch.manual_seed(0)
    plain = make_stream(cfg, "vmamba", 10, (1, 64, 64))
    skip = EncoderStream(plain.visual, 10, **cfg.vmamba.sequence_kwargs(), base_skip=True)
    skip.load_state_dict(plain.state_dict())
    base, depth = torch.randn(2, 3, 10), torch.randint(0, 256, (2, 3, 1, 64, 64), dtype=torch.uint8)
    ctx, ctx_skip = plain(base, depth), skip(base, depth)
    assert skip.out_features == plain.out_features + 10 == ctx_skip.shape[-1]
    torch.testing.assert_close(ctx_skip[:, : plain.out_features], ctx)
    torch.testing.assert_close(ctx_skip[:, plain.out_features :], base[:, -1])
    torch.testing.assert_close(skip(base, depth, return_all=True)["context"], ctx_skip)


def test_state_norm_critic_keeps_the_action_visible_at_any_context_scale():
    """With the spec's joint LayerNorm over [context, action], scaling the context up shrinks the action's
    share of the normalised input, so dQ/da fades; normalising the context alone makes Q invariant to the
    context's scale and leaves dQ/da intact."""
    from vmamba_rl.models.heads import Critic

    torch.manual_seed(0)
    ctx, a = torch.randn(8, 16), torch.rand(8, 3) * 2 - 1
    for norm in ("joint", "state"):
        critic = Critic(16, 3, 32, input_norm=norm)
        for layer in (critic.q1[-1], critic.q2[-1]):  # an output layer as after training, not ~0
            torch.nn.init.normal_(layer.weight)

        def grad_a(scale: float, critic=critic) -> torch.Tensor:
            act = a.clone().requires_grad_(True)
            critic.Q1(ctx * scale, act).sum().backward()
            return act.grad

        g1, g100 = grad_a(1.0), grad_a(100.0)
        if norm == "state":
            torch.testing.assert_close(g100, g1, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(critic.Q1(ctx * 100, a), critic.Q1(ctx, a), rtol=1e-4, atol=1e-5)
        else:
            assert g100.norm() < 0.05 * g1.norm()  # the joint norm hides the action
    with pytest.raises(ValueError, match="input_norm must be one of joint, state, got 'x'"):
        Critic(16, 3, 32, input_norm="x")


def test_component_shapes():
    B, K = 5, 4
    assert StateMLP(10, 8)(torch.randn(B, K, 10)).shape == (B, K, 8)
    assert FusionMLP(16, 8, 12)(torch.randn(B, K, 16), torch.randn(B, K, 8)).shape == (B, K, 12)
    assert TemporalMamba(12, 2, d_state=2, backend="reference")(torch.randn(B, K, 12)).shape == (B, K, 12)
    ctx, w = CrossAttention(12, 3)(torch.randn(B, K, 12), return_weights=True)
    assert ctx.shape == (B, 12) and w.shape == (B, K)
    enc = MambaSequenceEncoder(16, 8, 12, 1, 3, 2, 1.0, "reference")
    assert enc(torch.randn(B, K, 16), torch.randn(B, K, 8)).shape == (B, 12)


def test_cross_attention_queries_last_step():
    torch.manual_seed(0)
    att = CrossAttention(8, 2)
    x = torch.randn(2, 4, 8)
    ctx = att(x)
    # the query is the last step: changing only the query row changes the output even if keys stay
    ctx_manual, _ = att.attn(x[:, -1:], x, x)
    assert torch.allclose(ctx, ctx_manual.squeeze(1), atol=1e-6)
    with pytest.raises(ValueError, match="must divide"):
        CrossAttention(10, 4)


def test_temporal_block_is_bidirectional_as_documented():
    torch.manual_seed(0)
    blk = TemporalMambaBlock(8, d_state=2, ssm_ratio=1.0, backend="reference").double()
    x = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    y = blk(x)
    # not causal: the first step's output depends on the newest step (the backward scans carry it;
    # at Mamba's init delta is small, so the dependence is small but exactly non-zero)
    (g_first,) = torch.autograd.grad(y[0, 0].sum(), x, retain_graph=True)
    assert g_first[0, -1].abs().max() > 1e-9
    (g_last,) = torch.autograd.grad(y[0, -1].sum(), x)
    assert g_last[0, 0].abs().max() > 1e-9


def test_gradient_checkpointing_matches():
    cfg = tiny_cfg(vmamba_use_checkpoint=False)
    torch.manual_seed(1)
    m1 = _visual(cfg)
    cfg2 = tiny_cfg(vmamba_use_checkpoint=True)
    m2 = _visual(cfg2)
    m2.load_state_dict(m1.state_dict())
    x = torch.rand(3, 1, 64, 64)
    y1, y2 = m1(x), m2(x)
    assert torch.allclose(y1, y2, atol=1e-6)
    y1.square().sum().backward()
    y2.square().sum().backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-6, rtol=1e-5), n


def test_state_dict_round_trip_exact():
    cfg = tiny_cfg()
    torch.manual_seed(2)
    s1 = make_stream(cfg, "vmamba", 10, (1, 64, 64)).eval()
    torch.manual_seed(3)
    s2 = make_stream(cfg, "vmamba", 10, (1, 64, 64)).eval()
    base, depth = torch.randn(2, 4, 10), torch.randint(0, 256, (2, 4, 1, 64, 64), dtype=torch.uint8)
    assert not torch.equal(s1(base, depth), s2(base, depth))
    s2.load_state_dict(s1.state_dict())
    assert torch.equal(s1(base, depth), s2(base, depth))


def test_uint8_and_float_inputs_agree_and_microbatching():
    cfg = tiny_cfg()
    enc = _visual(cfg).eval()
    d = torch.randint(0, 256, (7, 1, 64, 64), dtype=torch.uint8)
    full = enc(d)
    assert torch.allclose(full, enc(d.float() / 255), atol=1e-6)
    enc.max_tensor_bytes = 1  # forces one image per micro-batch
    assert torch.allclose(enc(d), full, atol=1e-5)


def test_layer_scale_and_drop_path():
    blk = VSSBlock(8, drop_path=0.5, d_state=2, layer_scale_init=1e-6, backend="reference")
    assert torch.allclose(blk.ls1.gamma, torch.full((8,), 1e-6))
    x = torch.randn(4, 3, 3, 8)
    blk.eval()
    # with gamma 1e-6 the residual branch is negligible at init (what LayerScale is for)
    assert torch.allclose(blk(x), x, atol=1e-4)
    assert isinstance(VSSBlock(8, layer_scale_init=0.0, backend="reference").ls1, torch.nn.Identity)


def test_cnn_baseline_contract():
    enc = CNNVisualEncoder(1, (64, 64), 32)
    assert enc(torch.randint(0, 256, (2, 4, 1, 64, 64), dtype=torch.uint8)).shape == (2, 4, 32)


@pytest.mark.parametrize("backend", ["chunked", "cpu"])
def test_encoder_backends_match_reference(backend):
    """SS2D inside the whole encoder: same outputs and gradients as the reference loop (float64)."""
    torch.manual_seed(4)
    cfg = tiny_cfg(vmamba_ssm_d_state=4)
    ref = _visual(cfg).double()
    fast = _visual(tiny_cfg(vmamba_ssm_d_state=4, scan_backend=backend)).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    y_ref, y_fast = ref(x), fast(x)
    assert torch.allclose(y_ref, y_fast, rtol=1e-6, atol=1e-9)
    y_ref.square().sum().backward()
    y_fast.square().sum().backward()
    for (name, p1), p2 in zip(ref.named_parameters(), fast.parameters(), strict=True):
        scale = p1.grad.abs().max().clamp(min=1e-12)
        assert ((p1.grad - p2.grad).abs().max() / scale) < 1e-6, name
