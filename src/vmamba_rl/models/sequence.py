"""The decision-context stream: StateMLP, FusionMLP, TemporalMamba, CrossAttention, MambaSequenceEncoder.

``MambaSequenceEncoder`` follows the design's usage (``actor_mamba(visual_feat, state_feat)``,
docs/design.md): it takes per-step visual and state features and returns the context.
``EncoderStream`` is the whole stream of one side (actor or critic): depth + base sequences ->
context, i.e. the design's ``_process_sequence``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from vmamba_rl.models.vmamba import SS2D


class StateMLP(nn.Module):
    """(..., Ds) -> (..., Dsf): Linear -> ReLU -> Linear."""

    def __init__(self, state_dim: int, state_feature_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim, state_feature_dim),
            nn.ReLU(),
            nn.Linear(state_feature_dim, state_feature_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FusionMLP(nn.Module):
    """cat([visual (B, K, Dv), state (B, K, Dsf)]) -> (B, K, Dh): Linear -> LayerNorm -> ReLU."""

    def __init__(self, visual_dim: int, state_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(visual_dim + state_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU()
        )

    def forward(self, visual: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([visual, state], dim=-1))


class TemporalMambaBlock(nn.Module):
    """SS2D over time: (B, K, D) viewed as a (K, 1) grid, ``x + SS2D(LN(x))``.

    Not causal: on a (K, 1) grid SS2D's four directions are two forward and two backward scans over
    the K steps, so every output step sees the whole window. That is intended: the whole window is
    observed at decision time, and CrossAttention reads it from the last step.
    """

    def __init__(self, dim: int, d_state: int = 16, ssm_ratio: float = 2.0, backend: str = "auto") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ss2d = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, K, D = x.shape
        return x + self.ss2d(self.norm(x).view(B, K, 1, D)).view(B, K, D)


class TemporalMamba(nn.Module):
    """L TemporalMambaBlocks, each followed by LayerNorm: (B, K, D) -> (B, K, D). L = 0 is identity."""

    def __init__(
        self, dim: int, num_layers: int = 1, d_state: int = 16, ssm_ratio: float = 2.0, backend: str = "auto"
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [TemporalMambaBlock(dim, d_state, ssm_ratio, backend) for _ in range(num_layers)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, norm in zip(self.blocks, self.norms, strict=True):
            x = norm(block(x))
        return x


class CrossAttention(nn.Module):
    """Pool a sequence into one context: query = last step, keys/values = all K steps.

    forward(x (B, K, D), return_weights) -> context (B, D) [, weights (B, K) averaged over heads].
    ``last_head_weights`` keeps the per-head weights (B, heads, K) of the last call made with weights.
    """

    def __init__(self, dim: int, num_heads: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the hidden size ({dim})")
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.last_head_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        q = x[:, -1:, :]
        out, w = self.attn(q, x, x, need_weights=return_weights, average_attn_weights=False)
        ctx = out.squeeze(1)
        if not return_weights:
            return ctx
        self.last_head_weights = w.squeeze(2).detach()  # (B, heads, K)
        return ctx, w.squeeze(2).mean(1)

    @torch.no_grad()
    def get_attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The design's helper: (B, K, D) -> (B, K) head-averaged weights of the last step over history."""
        return self.forward(x, return_weights=True)[1]


class MambaSequenceEncoder(nn.Module):
    """(visual (B, K, Dv), state (B, K, Dsf)) -> context (B, Dh).

    FusionMLP -> TemporalMamba -> CrossAttention.
    """

    def __init__(
        self,
        visual_dim: int,
        state_feature_dim: int,
        hidden_dim: int,
        temporal_layers: int = 1,
        num_heads: int = 4,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.fusion = FusionMLP(visual_dim, state_feature_dim, hidden_dim)
        self.temporal = TemporalMamba(hidden_dim, temporal_layers, d_state, ssm_ratio, backend)
        self.cross_attn = CrossAttention(hidden_dim, num_heads)

    def forward(self, visual: torch.Tensor, state: torch.Tensor, return_weights: bool = False):
        return self.cross_attn(self.temporal(self.fusion(visual, state)), return_weights)


class EncoderStream(nn.Module):
    """One side's whole stream: base (B, K, Ds) + depth (B, K, C, H, W) -> context (B, Dh).

    ``visual`` is a VMambaVisualEncoder (or any module with the same contract, e.g. the CNN baseline).
    ``forward(..., return_all=True)`` also returns the intermediate features for visualisation.
    """

    def __init__(
        self,
        visual: nn.Module,
        state_dim: int,
        state_feature_dim: int = 128,
        hidden_dim: int = 256,
        temporal_layers: int = 1,
        num_heads: int = 4,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        backend: str = "auto",
        base_skip: bool = False,
    ) -> None:
        """``visual`` maps frames to ``visual.out_features`` (Dv); the sizes are the StateMLP width (Dsf)
        and the fusion / temporal / context width (Dh); ``base_skip`` appends the newest raw (possibly
        normalised) base vector to the context, so the heads see e.g. the sign of the goal bearing
        directly (context (B, Dh + Ds))."""
        super().__init__()
        self.visual = visual
        self.state = StateMLP(state_dim, state_feature_dim)
        self.mamba = MambaSequenceEncoder(
            visual.out_features,
            state_feature_dim,
            hidden_dim,
            temporal_layers,
            num_heads,
            d_state,
            ssm_ratio,
            backend,
        )
        self.base_skip = base_skip
        self.out_features = hidden_dim + (state_dim if base_skip else 0)

    def forward(
        self,
        base: torch.Tensor,
        depth: torch.Tensor,
        return_all: bool = False,
        frame_index: torch.Tensor | None = None,
    ):
        """base (B, K, Ds); depth (B, K, C, H, W), or (U, C, H, W) distinct frames with ``frame_index``
        (B, K) long mapping each window step to its frame (each frame is encoded once)."""
        v = self.visual(depth)  # (B, K, Dv) or (U, Dv)
        if frame_index is not None:
            v = v[frame_index]  # (B, K, Dv); the gather's backward sums the shared frames' gradients
        return self.from_features(base, v, return_all)

    def from_features(self, base: torch.Tensor, v: torch.Tensor, return_all: bool = False):
        """base (B, K, Ds) + per-frame visual features v (B, K, Dv) -> context (B, Dh): the stream after
        its visual encoder (``forward`` without the image part)."""
        s = self.state(base.float())  # (B, K, Dsf)
        ctx, w = self.mamba(v, s, return_weights=True) if return_all else (self.mamba(v, s), None)
        if self.base_skip:
            ctx = torch.cat([ctx, base[:, -1].to(ctx.dtype)], dim=-1)
        if not return_all:
            return ctx
        return {"visual": v, "state": s, "context": ctx, "attention": w}


class FrameFeatureCache:
    """Visual features of the frames in the last acting call, reused while the encoder is unchanged.

    A K-step window shares K - 1 frames with the same environment's previous window, so an acting
    call re-encodes frames it has just encoded. While the weights stay the same (evaluation, a Ray
    worker between weight broadcasts, collection between updates) their features are the same too,
    and only new frames need the encoder; repeated frames within a call (the padding at an
    episode's start) are encoded once. Frames are matched by their bytes. The caller passes a
    ``generation`` that changes whenever it changes the weights (the agents count updates and loads:
    the fused Adam step writes parameters without bumping their version counters); an in-place edit
    of a parameter outside the agent also empties the cache, through those counters. While training
    updates the weights every step this is the plain forward. A cached feature may differ from a
    freshly batched one by float rounding (about 1e-7; the encoder's kernels are not
    batch-invariant), so ``clear()`` before a checkpoint keeps resumed runs bit-exact.
    """

    def __init__(self) -> None:
        self._weights: tuple | None = None
        self._features: dict[bytes, torch.Tensor] = {}  # frame bytes -> (Dv,) feature
        self.encoded = 0  # frames passed to the encoder, for tests and benchmarks
        self.reused = 0  # frames served from the cache

    def clear(self) -> None:
        self._weights, self._features = None, {}

    @staticmethod
    def _weights_key(visual: nn.Module) -> tuple:
        return tuple((id(t), t._version) for t in itertools.chain(visual.parameters(), visual.buffers()))

    def features(
        self, visual: nn.Module, depth: np.ndarray, device: torch.device, generation: int
    ) -> torch.Tensor:
        """depth (N, K, C, H, W) uint8 frames -> visual features (N, K, Dv) from ``visual``."""
        depth = np.ascontiguousarray(depth)
        n, k = depth.shape[:2]
        frames = depth.reshape(n * k, *depth.shape[2:])
        key = (generation, self._weights_key(visual))
        if key != self._weights:
            self._weights, self._features = key, {}
        slots: dict[bytes, int] = {}  # frame bytes -> row of `rows` in this call
        index = np.empty(n * k, np.int64)
        new: list[int] = []
        keys = [frame.tobytes() for frame in frames]
        for i, b in enumerate(keys):
            if b not in slots:
                slots[b] = len(slots)
                if b not in self._features:
                    new.append(i)
            index[i] = slots[b]
        if new:
            fresh = visual(torch.as_tensor(frames[new], device=device))  # (U_new, Dv)
            for j, i in enumerate(new):
                self._features[keys[i]] = fresh[j]
        self.encoded += len(new)
        self.reused += len(slots) - len(new)
        # keep only this call's frames: the next window of each environment shares K - 1 of them
        self._features = {b: self._features[b] for b in slots}
        rows = torch.stack(list(self._features.values()))  # (U, Dv), in slot order
        return rows[torch.as_tensor(index, device=device)].view(n, k, -1)
