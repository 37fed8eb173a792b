"""Parameter counts and forward FLOPs of the VMamba-TD3 networks (``vmamba-rl info``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vmamba_rl.agents.td3 import make_stream
from vmamba_rl.config import Config
from vmamba_rl.models.heads import Actor, Critic
from vmamba_rl.models.vmamba import SS2D, VMambaVisualEncoder


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def scan_flops(model: nn.Module, img_size: tuple[int, int], patch_size: int) -> int:
    """Analytic FLOPs of the selective scans in a VMambaRLTiny per image (FlopCounter skips them).

    Per channel, state and step: delta*A, exp, dA*h, delta*u*B (2), add, C*h and sum (2) = 8 FLOPs.
    """
    total = 0
    H, W = img_size[0] // patch_size, img_size[1] // patch_size
    for stage_idx, stage in enumerate(model.backbone.stages):
        h, w = -(-H // 2**stage_idx), -(-W // 2**stage_idx)
        for block in stage:
            op: SS2D = block.op
            total += 8 * op.K * op.d_inner * op.d_state * h * w
    return total


def network_table(
    cfg: Config, base_dim: int = 10, depth_shape: tuple[int, int, int] = (1, 64, 64), action_dim: int = 3
) -> list[tuple[str, int]]:
    """Rows (module name, parameter count) for one VMamba-TD3 agent, and totals."""
    stream = make_stream(cfg, "vmamba", base_dim, depth_shape)
    actor = Actor(stream.out_features, action_dim, cfg.hidden_dim)
    critic = Critic(stream.out_features, action_dim, cfg.hidden_dim, cfg.critic_norm)
    bb = stream.visual.backbone
    rows = [
        ("VMambaRLTiny.patch_embed", count_params(bb.patch_embed)),
        *[
            (f"VMambaRLTiny.stage{i + 1} (+downsample)", count_params(s) + count_params(d))
            for i, (s, d) in enumerate(zip(bb.stages, bb.downsamples, strict=True))
        ],
        ("VMambaRLTiny.norm+head", count_params(bb.norm) + count_params(bb.head)),
        ("VMambaVisualEncoder (total)", count_params(stream.visual)),
        ("StateMLP", count_params(stream.state)),
        ("MambaSequenceEncoder.fusion", count_params(stream.mamba.fusion)),
        ("MambaSequenceEncoder.temporal", count_params(stream.mamba.temporal)),
        ("MambaSequenceEncoder.cross_attn", count_params(stream.mamba.cross_attn)),
        ("one encoder stream", count_params(stream)),
        ("Actor head", count_params(actor)),
        ("Critic heads (Q1+Q2)", count_params(critic)),
    ]
    n_streams = 1 if cfg.share_encoder else 2
    online = n_streams * count_params(stream) + count_params(actor) + count_params(critic)
    rows += [("agent, online (trainable)", online), ("agent, with target copies", 2 * online)]
    return rows


def visual_flops(cfg: Config, depth_shape: tuple[int, int, int] = (1, 64, 64)) -> tuple[int, int]:
    """(dense FLOPs counted by torch, analytic scan FLOPs) of one VMambaRLTiny forward on one image."""
    C, H, W = depth_shape
    enc = VMambaVisualEncoder(C, (H, W), cfg.feature_dim, **cfg.vmamba.backbone_kwargs()).eval()
    x = torch.zeros(1, C, H, W)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        enc(x)
    return int(fc.get_total_flops()), scan_flops(enc, (H, W), cfg.vmamba.vmamba_patch_size)


def format_info(cfg: Config, depth_shape: tuple[int, int, int] = (1, 64, 64)) -> str:
    rows = network_table(cfg, depth_shape=depth_shape)
    dense, scan = visual_flops(cfg, depth_shape)
    lines = [
        f"preset: {cfg.preset or '(none)'}   image: {depth_shape}   blocks: {cfg.vmamba_num_vss_blocks}   "
        f"hidden: {cfg.vmamba_hidden_dim}   d_state: {cfg.vmamba_ssm_d_state}",
        "",
        f"{'module':<40} {'parameters':>14}",
    ]
    lines += [f"{name:<40} {n:>14,}" for name, n in rows]
    lines += [
        "",
        f"VMambaRLTiny forward per image: {dense / 1e6:,.1f} MFLOPs dense + {scan / 1e6:,.1f} MFLOPs scan "
        f"= {(dense + scan) / 1e6:,.1f} MFLOPs",
    ]
    return "\n".join(lines)
