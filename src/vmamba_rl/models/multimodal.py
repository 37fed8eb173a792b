"""Per-modality embeddings and their fusion (the HOPE document's network front end).

Shape letters: B batch, K history length, E ``embed_size``, n number of tokens (modalities, plus the
action for critics), h heads, d ``dim_head``, A action size, F fused feature size (``fusion_hidden``).

::

    obs {key: (B, K, *shape)}                 vectors (normalised floats), images uint8 or float
      vector (B, K, D)      -> (B, K*D)       -> Linear -> Tanh -> Linear           -> (B, E)
      image  (B, K, C, H, W)-> (B, K*C, H, W) -> CNNVisualEncoder or VMambaVisualEncoder -> (B, E)
      [critic] action (B, A)                  -> Linear -> Tanh -> Linear  (attention: one more token)
                                                 or concatenated as is      (mlp)
    fusion "mlp":       concat (B, n*E [+A]) -> Linear -> Tanh -> Linear -> Tanh -> Linear -> (B, F)
    fusion "attention": stack  (B, n, E) -> pre-norm Transformer layers -> LayerNorm
                        -> flatten (B, n*E) -> Linear -> Tanh -> Linear -> (B, F)

Every Linear / Conv2d here starts orthogonal with zero bias (HOPE's init); the VMamba encoder keeps its
own initialisation.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn


def orthogonal_init(module: nn.Module, gain: float = 1.0) -> nn.Module:
    """Orthogonal weights, zero biases for every Linear / Conv2d inside ``module``; returns it."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


# --- embeddings ----------------------------------------------------------------------------------------
class VectorEmbedding(nn.Module):
    """``f = Tanh(x W1 + b1) W2 + b2`` (the document's lidar embedding): (B, in_dim) -> (B, E)."""

    def __init__(self, in_dim: int, embed_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, embed_size), nn.Tanh(), nn.Linear(embed_size, embed_size))
        orthogonal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- fusion --------------------------------------------------------------------------------------------
class MLPFusion(nn.Module):
    """The document's MLP fusion: (B, in_dim) concatenated features -> (B, out_dim).

    ``h1 = Tanh(f W1 + b1); h2 = Tanh(h1 W2 + b2); out = h2 W3 + b3``.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, out_dim),
        )
        orthogonal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiHeadSelfAttention(nn.Module):
    """The document's attention: (B, n, E) -> (B, n, E) and weights (B, h, n, n).

    ``[Q, K, V] = X W_qkv`` (one ``to_qkv`` Linear, ``chunk(3)``), split heads -> (B, h, n, d),
    ``softmax(Q K^T / sqrt(d))``, dropout, ``O = alpha V``, merge heads -> (B, n, h*d), output Linear.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, h, n, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q, k, v = (self._split(t) for t in self.to_qkv(x).chunk(3, dim=-1))
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, h, n, n)
        weights = self.attend(dots)
        out = torch.matmul(self.dropout(weights), v)  # (B, h, n, d)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)  # 'b h n d -> b n (h d)'
        return self.to_out(out), weights


class TransformerLayer(nn.Module):
    """Pre-norm encoder layer: ``x + Attn(LN(x))``, then ``x + FF(LN(x))``; FF = Linear, Tanh, Linear."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_dim),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(ff_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n, E) -> (B, n, E), attention weights (B, h, n, n)."""
        a, w = self.attn(self.norm1(x))
        x = x + a
        x = x + self.ff(self.norm2(x))
        return x, w


class AttentionFusion(nn.Module):
    """Modality tokens (B, n, E) -> Transformer encoder -> flatten -> Linear, Tanh, Linear -> (B, out_dim).

    Flattening keeps each token's position, so which modality sits where matters (no token is pooled away).
    """

    def __init__(
        self,
        n_tokens: int,
        dim: int,
        heads: int,
        dim_head: int,
        depth: int,
        ff_dim: int,
        hidden: int,
        out_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.layers = nn.ModuleList(
            TransformerLayer(dim, heads, dim_head, ff_dim, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(n_tokens * dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
        orthogonal_init(self)

    def forward(
        self, tokens: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, n, E) -> (B, out_dim); with ``return_attention`` also weights (depth, B, h, n, n)."""
        if tokens.shape[1] != self.n_tokens:
            raise ValueError(f"AttentionFusion was built for {self.n_tokens} tokens, got {tokens.shape[1]}")
        x = tokens
        weights = []
        for layer in self.layers:
            x, w = layer(x)
            weights.append(w)
        out = self.head(self.norm(x).flatten(1))
        return (out, torch.stack(weights)) if return_attention else out


# --- the encoder ---------------------------------------------------------------------------------------
def modality_kind(space: gym.Space) -> str:
    """ "image" for 3-D Box (C, H, W), "vector" for any other Box (flattened); other spaces are refused."""
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"multimodal encoder supports Box modalities only, got {space}")
    return "image" if len(space.shape) == 3 else "vector"


class MultimodalEncoder(nn.Module):
    """Embeds a Dict observation with a K-step history per modality and fuses the embeddings.

    ``observation_space`` is the single-step Dict space. With ``action_dim > 0`` the encoder also takes an
    action (critics): an extra token for attention fusion, concatenated raw for MLP fusion.

    forward(obs {key: (B, K, *shape)}, action (B, A) | None) -> (B, fusion_hidden). Vectors should
    already be normalised; images may be uint8.

    ``image_embedding(in_chans, (H, W))`` builds the module that embeds an image modality's K frames,
    stacked as channels, into ``embed_size`` features; vectors get a :class:`VectorEmbedding` of their K
    steps concatenated. ``fusion`` is "mlp" or "attention" (with the ``attention_*`` sizes).
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        image_embedding: Callable[[int, tuple[int, int]], nn.Module],
        embed_size: int = 128,
        fusion: str = "mlp",
        fusion_hidden: int = 256,
        history: int = 1,
        action_dim: int = 0,
        dropout: float = 0.0,
        attention_heads: int = 8,
        attention_dim_head: int = 32,
        attention_depth: int = 1,
        attention_ff_dim: int = 128,
    ) -> None:
        super().__init__()
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if fusion not in ("mlp", "attention"):
            raise ValueError(f"fusion must be 'mlp' or 'attention', got {fusion!r}")
        self.history = history
        self.action_dim = action_dim
        self.fusion_type = fusion
        self.out_dim = fusion_hidden
        self.keys: list[str] = list(observation_space.spaces)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.kinds: dict[str, str] = {}
        E = embed_size
        embeds: dict[str, nn.Module] = {}
        for k in self.keys:
            space = observation_space.spaces[k]
            kind = modality_kind(space)
            self.kinds[k] = kind
            self.shapes[k] = tuple(space.shape)
            if kind == "image":
                c, h, w = space.shape
                embeds[k] = image_embedding(history * c, (h, w))  # K frames stacked as channels
            else:
                embeds[k] = VectorEmbedding(history * int(np.prod(space.shape)), E)  # K steps concatenated
        self.embeddings = nn.ModuleDict(embeds)
        self.token_names: list[str] = list(self.keys)
        n = len(self.keys)
        if fusion == "attention":
            if action_dim > 0:
                self.action_embedding = VectorEmbedding(action_dim, E)
                self.token_names.append("action")
                n += 1
            self.fusion: nn.Module = AttentionFusion(
                n,
                E,
                attention_heads,
                attention_dim_head,
                attention_depth,
                attention_ff_dim,
                fusion_hidden,
                fusion_hidden,
                dropout,
            )
        else:
            self.fusion = MLPFusion(n * E + action_dim, fusion_hidden, fusion_hidden)

    def _embed(self, obs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for k in self.keys:
            if k not in obs:
                raise KeyError(f"observation lacks modality {k!r}; encoder expects {self.keys}")
            x = obs[k]
            shape = self.shapes[k]
            if x.dim() != len(shape) + 2 or x.shape[1] != self.history or tuple(x.shape[2:]) != shape:
                raise ValueError(
                    f"modality {k!r} must be (B, K={self.history}, {', '.join(map(str, shape))}), "
                    f"got {tuple(x.shape)}"
                )
            b = x.shape[0]
            if self.kinds[k] == "image":
                out.append(self.embeddings[k](x.reshape(b, self.history * shape[0], *shape[1:])))  # (B, E)
            else:
                out.append(self.embeddings[k](x.reshape(b, -1).float()))  # (B, E)
        return out

    def forward(
        self, obs: dict[str, torch.Tensor], action: torch.Tensor | None = None, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """-> (B, out_dim); with ``return_attention`` (attention fusion only) also (depth, B, h, n, n)."""
        if (action is not None) != (self.action_dim > 0):
            raise ValueError(
                f"this encoder was built with action_dim={self.action_dim}; "
                f"{'pass' if self.action_dim else 'do not pass'} an action"
            )
        feats = self._embed(obs)
        if self.fusion_type == "attention":
            if action is not None:
                feats.append(self.action_embedding(action))
            return self.fusion(torch.stack(feats, dim=1), return_attention=return_attention)  # (B, n, E) in
        if return_attention:
            raise ValueError("attention weights exist only with fusion='attention'")
        if action is not None:
            feats.append(action)
        return self.fusion(torch.cat(feats, dim=-1))  # (B, n*E [+A]) in


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "AttentionFusion",
    "MLPFusion",
    "MultiHeadSelfAttention",
    "MultimodalEncoder",
    "TransformerLayer",
    "VectorEmbedding",
    "count_parameters",
    "modality_kind",
    "orthogonal_init",
]
