"""The visual encoder of VMamba-TD3: PatchPartition, SS2D, VSSBlock, DownsampleV3, VMambaRLTiny.

Shapes follow the design's data flow (docs/design.md). Inside the backbone tokens are channel-last
(N, H, W, C) so that projections are plain ``nn.Linear`` (faster than 1x1 convs on CPU);
SS2D hands the selective scan a (N, 4*Di, L) tensor whose time axis is contiguous.

Resolution rule (the design says patch 16 but puts stage 1 at H/4): ``vmamba_patch_size`` p is the stem's
total stride, built from log2(p) stride-2 3x3 convs (p = 4 is VMamba v2's two-conv stem). Stages 2-4
each halve the grid, so H and W must be multiples of 8p: 32 for p = 4 (64x64 -> 16, 8, 4, 2 tokens).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vmamba_rl.ops.cross_scan import cross_merge, cross_scan
from vmamba_rl.ops.layer_norm import LayerNorm
from vmamba_rl.ops.selective_scan import selective_scan_fn


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` (training)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel learnable scale ``gamma * x`` (CaiT); the design's ``vmamba_layer_scale_init``."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def _trunc_normal_init(module: nn.Module) -> None:
    """VMamba's init for plain layers: Linear trunc_normal(0.02) and zero bias; LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear) and not getattr(m, "_keep_init", False):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PatchPartition(nn.Module):
    """Stem: (N, C_in, H, W) -> (N, H/p, W/p, C) with log2(p) stride-2 3x3 convs, LN + GELU between.

    p = 1 uses a single 1x1 conv. The last conv is followed by LayerNorm (channel-last), as in VMamba v2.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        if patch_size < 1 or patch_size & (patch_size - 1):
            raise ValueError(f"patch_size must be a power of 2, got {patch_size}")
        self.patch_size = patch_size
        n = int(math.log2(patch_size))
        layers: list[nn.Module] = []
        if n == 0:
            layers.append(nn.Conv2d(in_chans, embed_dim, 1))
        c = in_chans
        for i in range(n):
            out = embed_dim if i == n - 1 else max(embed_dim // 2, 1)
            layers.append(nn.Conv2d(c, out, 3, stride=2, padding=1))
            if i < n - 1:
                layers += [_ChannelLastLN(out), nn.GELU()]
            c = out
        self.proj = nn.Sequential(*layers)
        self.norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.is_contiguous():
            # Channels-last on CPU: oneDNN's NHWC convolutions are faster here (about 3x for the stem's
            # first conv, docs/benchmarks.md), and the LayerNorms between them then read
            # contiguous channel rows instead of copying a permuted map. With one input channel the
            # strides say which layout it is, so they are set directly (the same memory either way).
            _, C, H, W = x.shape
            x = (
                x.as_strided(x.shape, (C * H * W, 1, W * C, C))
                if C == 1
                else x.contiguous(memory_format=torch.channels_last)
            )
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class _ChannelLastLN(LayerNorm):
    """LayerNorm over channels of a channel-first (N, C, H, W) map (no copy when it is channels-last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DownsampleV3(nn.Module):
    """(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C_out): 3x3 stride-2 conv then LayerNorm."""

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        out_dim = out_dim or 2 * dim
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1)
        self.norm = LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


class SS2D(nn.Module):
    """2-D selective scan (VMamba v05_noz): (N, H, W, C) -> (N, H, W, C).

    in_proj (C -> Di, no bias) -> 3x3 depthwise conv -> SiLU -> cross-scan in 4 directions ->
    per-direction x_proj (Di -> R + 2*d_state) and dt_proj (R -> Di) -> selective scan
    (delta = softplus(dt + bias), A = -exp(A_logs), D skip) -> cross-merge -> LayerNorm -> out_proj.
    """

    K = 4  # scan directions

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | None = None,
        d_conv: int = 3,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.dim, self.d_state, self.backend = dim, d_state, backend
        self.d_inner = di = max(int(ssm_ratio * dim), 1)
        self.dt_rank = r = dt_rank or math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, di, bias=False)
        self.conv2d = nn.Conv2d(di, di, d_conv, padding=(d_conv - 1) // 2, groups=di, bias=False)
        k = self.K
        # per-direction projections stored stacked so one einsum serves all four directions
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * d_state, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k * di))
        self.A_logs = nn.Parameter(torch.empty(k * di, d_state))
        self.Ds = nn.Parameter(torch.empty(k * di))
        self.out_norm = LayerNorm(di)
        self.out_proj = nn.Linear(di, dim, bias=False)
        self._dt_range = (dt_min, dt_max)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's init: dt bias = inv-softplus(log-uniform[dt_min, dt_max]), A = -(1..N), D = 1."""
        dt_min, dt_max = self._dt_range
        di, r, k = self.d_inner, self.dt_rank, self.K
        bound = 1.0 / math.sqrt(di)
        self.x_proj_weight.uniform_(-bound, bound)  # nn.Linear's default for a Di-input layer
        self.dt_projs_weight.uniform_(-(r**-0.5), r**-0.5)
        dt = torch.exp(torch.rand(k * di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_projs_bias.copy_(_inverse_softplus(dt.clamp(min=1e-4)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(k * di, 1))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H, W, _ = x.shape
        di, r, n, k = self.d_inner, self.dt_rank, self.d_state, self.K
        x = self.in_proj(x).permute(0, 3, 1, 2)  # (N, Di, H, W)
        x = F.silu(self.conv2d(x))
        xs = cross_scan(x)  # (N, 4, Di, L)
        L = H * W
        x_dbl = torch.einsum("nkdl,kcd->nkcl", xs, self.x_proj_weight)  # (N, 4, R + 2n, L)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = torch.einsum("nkrl,kdr->nkdl", dts, self.dt_projs_weight)  # (N, 4, Di, L)
        y = selective_scan_fn(
            xs.reshape(N, k * di, L),
            dts.reshape(N, k * di, L),
            -torch.exp(self.A_logs),
            Bs.contiguous(),
            Cs.contiguous(),
            self.Ds,
            delta_bias=self.dt_projs_bias,
            delta_softplus=True,
            backend=self.backend,
        ).view(N, k, di, L)
        y = cross_merge(y, H, W).permute(0, 2, 3, 1)  # (N, H, W, Di)
        return self.out_proj(self.out_norm(y))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on the channel axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """``x + DropPath(LS(SS2D(LN(x))))`` then ``x + DropPath(LS(MLP(LN(x))))``: (N, H, W, C) -> same."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, backend=backend)
        self.drop_path = DropPath(drop_path)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init > 0 else nn.Identity()
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))
            self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.op(self.norm(x))))
        if self.mlp is not None:
            x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x


def valid_image_sizes(patch_size: int, upto: int = 256) -> list[int]:
    """Side lengths (<= upto) that the stem and three downsamplings divide exactly."""
    m = 8 * patch_size
    return list(range(m, upto + 1, m))


class VMambaRLTiny(nn.Module):
    """Lightweight VMamba backbone: (N, C_in, H, W) float -> (N, out_features).

    [InputAdapter 1x1 conv C_in -> 3] -> PatchPartition -> 4 stages of VSSBlocks (DownsampleV3 between,
    channels C, 2C, 4C, 8C at H/p .. H/8p) -> LayerNorm -> global average pool -> Linear.
    """

    def __init__(
        self,
        in_chans: int = 1,
        img_size: tuple[int, int] = (64, 64),
        patch_size: int = 4,
        hidden_dim: int = 64,
        depths: tuple[int, ...] | list[int] = (2, 2, 4, 2),
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        layer_scale_init: float = 0.0,
        out_features: int = 128,
        input_adapter: bool = False,
        use_checkpoint: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        H, W = img_size
        m = 8 * patch_size
        if H % m or W % m:
            raise ValueError(
                f"image size {H}x{W} does not fit vmamba_patch_size={patch_size}: height and width must be "
                f"multiples of 8*patch_size = {m} (e.g. {valid_image_sizes(patch_size)[:6]}); use a smaller "
                f"--vmamba_patch_size or resize the images"
            )
        if len(depths) != 4:
            raise ValueError(f"depths needs 4 stages, got {list(depths)}")
        self.img_size, self.in_chans, self.out_features = (H, W), in_chans, out_features
        self.use_checkpoint = use_checkpoint
        self.input_adapter = nn.Conv2d(in_chans, 3, 1) if input_adapter else None
        self.patch_embed = PatchPartition(3 if input_adapter else in_chans, hidden_dim, patch_size)
        dims = [hidden_dim * 2**i for i in range(4)]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        i = 0
        for s in range(4):
            self.stages.append(
                nn.Sequential(
                    *[
                        VSSBlock(
                            dims[s], dpr[i + j], d_state, ssm_ratio, mlp_ratio, layer_scale_init, backend
                        )
                        for j in range(depths[s])
                    ]
                )
            )
            i += depths[s]
            self.downsamples.append(DownsampleV3(dims[s], dims[s + 1]) if s < 3 else nn.Identity())
        self.norm = LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], out_features)
        _trunc_normal_init(self)
        for mod in self.modules():  # the trunc-normal pass must not undo Mamba's SSM init
            if isinstance(mod, SS2D):
                mod.reset_ssm_parameters()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> pooled (N, 8C) features before the head."""
        if self.input_adapter is not None:
            x = self.input_adapter(x)
        x = self.patch_embed(x)  # (N, H/p, W/p, C)
        for stage, down in zip(self.stages, self.downsamples, strict=True):
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                # recompute activations in backward: memory for time (the design's gradient checkpointing)
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            x = down(x)
        return self.norm(x).mean(dim=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _largest_activation_bytes(model: VMambaRLTiny) -> int:
    """Bytes per image of the biggest hot-path tensor (stage-1 cross-scan: 4 x Di x L floats)."""
    H, W = model.img_size
    p = model.patch_embed.patch_size
    di = model.stages[0][0].op.d_inner
    return 4 * 4 * di * (H // p) * (W // p)


class VMambaVisualEncoder(nn.Module):
    """Depth frames -> visual features. (N, C, H, W) or (B, K, C, H, W), uint8 0..255 or float in [0, 1].

    Returns (N, out_features) or (B, K, out_features). uint8 input is divided by 255 here, so replay
    can keep frames as bytes. On CPU, large batches are split into micro-batches so that no hot-path
    tensor exceeds ``max_tensor_bytes`` (glibc serves >32 MB allocations with fresh mmaps: slow).
    """

    def __init__(
        self,
        in_chans: int = 1,
        img_size: tuple[int, int] = (64, 64),
        out_features: int = 128,
        *,
        max_tensor_bytes: int = 32 << 20,
        **backbone: Any,
    ) -> None:
        """``backbone``: the other :class:`VMambaRLTiny` arguments (``patch_size``, ``hidden_dim``,
        ``depths``, ...; ``VMambaConfig.backbone_kwargs()`` gives them from the options)."""
        super().__init__()
        self.backbone = VMambaRLTiny(in_chans, img_size, out_features=out_features, **backbone)
        self.out_features = self.backbone.out_features
        self.max_tensor_bytes = max_tensor_bytes
        self._per_image = _largest_activation_bytes(self.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        dtype = self.backbone.head.weight.dtype  # float32 normally, float64 in precision tests
        x = x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype)
        n = x.shape[0]
        chunk = max(1, self.max_tensor_bytes // self._per_image)
        if x.device.type != "cpu" or n <= chunk:
            out = self.backbone(x)
        else:
            out = torch.cat([self.backbone(x[i : i + chunk]) for i in range(0, n, chunk)])
        return out.view(*lead, -1)
