"""A residual MLP score network for flat `(B, D)` data (toy 2-D sets, tabular data)."""

from __future__ import annotations

import torch
from torch import nn

from sde.models.layers import GaussianFourierProjection, timestep_embedding


class MLP(nn.Module):
    """Residual MLP `f(x, cond) -> (B, D)` with a sinusoidal or Fourier embedding of `cond`.

    `cond` is whatever `get_score_fn(time_input=...)` feeds the network: 999 t, sigma(t) or a
    step. Each block is h <- h + W2 act(W1 act(h) + Dense(temb)). Optional class conditioning
    adds a label embedding (label `num_classes` is the null label for classifier-free guidance).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        num_layers: int = 3,
        embedding_type: str = "positional",
        emb_dim: int = 128,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
        activation: str = "silu",
    ):
        super().__init__()
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', "
                             f"got {embedding_type!r}")
        if dim < 1 or hidden < 1 or num_layers < 1:
            raise ValueError(f"dim, hidden, num_layers must be >= 1, "
                             f"got {dim}, {hidden}, {num_layers}")
        self.dim, self.embedding_type, self.emb_dim = dim, embedding_type, emb_dim
        self.act = {"silu": nn.SiLU(), "relu": nn.ReLU(), "gelu": nn.GELU()}[activation]
        if embedding_type == "fourier":
            self.fourier = GaussianFourierProjection(emb_dim // 2, scale=fourier_scale)
        self.temb = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.num_classes = num_classes
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + 1, hidden)  # last index: null label
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"dense": nn.Linear(hidden, hidden), "temb": nn.Linear(hidden, hidden),
                           "out": nn.Linear(hidden, hidden)})
            for _ in range(num_layers)
        )
        self.out = nn.Linear(hidden, dim)

    def embed(self, cond: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """Time (and label) embedding, (B, hidden)."""
        if self.embedding_type == "fourier":
            emb = self.fourier(cond)
        else:
            emb = timestep_embedding(cond, self.emb_dim)
        temb = self.temb(emb)
        if self.num_classes is not None:
            if class_labels is None:
                class_labels = torch.full_like(cond, self.num_classes, dtype=torch.long)
            temb = temb + self.label_emb(class_labels)
        return temb

    def forward(self, x: torch.Tensor, cond: torch.Tensor, class_labels=None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x shaped (B, {self.dim}), got {tuple(x.shape)}")
        temb = self.act(self.embed(cond.to(x.dtype), class_labels))  # (B, hidden)
        h = self.inp(x)  # (B, hidden)
        for block in self.blocks:
            z = self.act(block["dense"](self.act(h)) + block["temb"](temb))
            h = h + block["out"](z)
        return self.out(self.act(h))  # (B, D)
