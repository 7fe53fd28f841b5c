"""Reward heads: an MLP over [embedding, numeric, categorical embeddings] plus a factorisation term
over ID embeddings.

logit(x) = MLP([e(x), z(x), E_c(x)]) + sum_j b_j[id_j] + sum_{j<k} <V_j[id_j], V_k[id_k]>

With the text embedding e(x) alone this is the paper's MLP head on frozen LLM embeddings; with two
ID columns alone (user_id, response_id) and no MLP input it is exactly (weighted) matrix
factorisation, global bias + user bias + item bias + <u, v>, as used for ratings logs such as Coat.
Standard MF regularises the factors and biases of the rows it sees (Koren, Bell & Volinsky, 2009):
:meth:`RewardHead.id_penalty` is that L2 term, added to the loss with weight ``--id-l2``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class RewardHead(nn.Module):
    """Maps a batch of features to reward logits of shape (batch,).

    Parameters
    ----------
    embedding_dim : width of the text embedding (0: none).
    n_numeric : number of standardised numeric features.
    categorical_cardinalities : vocabulary size (incl. unknown) of each categorical column.
    id_cardinalities : vocabulary size of each ID column (factorisation term).
    hidden : MLP hidden widths; ``()`` gives a linear layer.
    """

    def __init__(self, *, embedding_dim: int = 0, n_numeric: int = 0, categorical_cardinalities: tuple[int, ...] = (),
                 categorical_dim: int = 8, id_cardinalities: tuple[int, ...] = (), id_dim: int = 16,
                 hidden: tuple[int, ...] = (256, 64), dropout: float = 0.1) -> None:
        super().__init__()
        self.architecture: dict[str, Any] = {
            "embedding_dim": embedding_dim, "n_numeric": n_numeric,
            "categorical_cardinalities": list(categorical_cardinalities), "categorical_dim": categorical_dim,
            "id_cardinalities": list(id_cardinalities), "id_dim": id_dim, "hidden": list(hidden), "dropout": dropout,
        }
        self.categorical = nn.ModuleList(nn.Embedding(n, categorical_dim) for n in categorical_cardinalities)
        width = embedding_dim + n_numeric + categorical_dim * len(categorical_cardinalities)
        layers: list[nn.Module] = []
        for size in hidden if width else ():
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
            width = size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1)) if width else None
        # The MLP's last layer has its own bias; a separate global bias only when there is no MLP (pure
        # MF), so no parameter is ever unused (DDP requires every parameter to receive a gradient).
        self.bias = nn.Parameter(torch.zeros(1)) if self.mlp is None else None
        self.id_factors = nn.ModuleList(nn.Embedding(n, id_dim) for n in id_cardinalities)
        self.id_bias = nn.ModuleList(nn.Embedding(n, 1) for n in id_cardinalities)
        for factors in self.id_factors:
            # Small random factors break the symmetry between users / items (MF practice).
            nn.init.normal_(factors.weight, std=0.1)
        for bias in self.id_bias:
            nn.init.zeros_(bias.weight)

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any]) -> "RewardHead":
        values = dict(architecture)
        for key in ("categorical_cardinalities", "id_cardinalities", "hidden"):
            values[key] = tuple(values[key])
        return cls(**values)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if "embedding" in batch:
            parts.append(batch["embedding"])
        if "numeric" in batch:
            parts.append(batch["numeric"])
        if "categorical" in batch:
            parts += [table(batch["categorical"][:, j]) for j, table in enumerate(self.categorical)]
        if self.mlp is not None:
            logit = self.mlp(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)).squeeze(-1)
        else:
            logit = self.bias.expand(next(iter(batch.values())).shape[0])
        if self.id_factors:
            ids = batch["ids"]
            factors = torch.stack([table(ids[:, j]) for j, table in enumerate(self.id_factors)], dim=1)
            # sum_{j<k} <v_j, v_k> = ((sum_j v_j)^2 - sum_j v_j^2) / 2  (Rendle's FM identity).
            pairwise = 0.5 * (factors.sum(1).square() - factors.square().sum(1)).sum(-1)
            biases = torch.cat([table(ids[:, j]) for j, table in enumerate(self.id_bias)], dim=-1).sum(-1)
            logit = logit + pairwise + biases
        return logit

    def id_penalty(self, batch: dict[str, torch.Tensor], row_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Standard MF's L2 term on a batch: sum over ID columns j of ||V_j[id_j]||^2 + b_j[id_j]^2,
        averaged over the rows (weighted by ``row_weight``, shape (batch,), when given).

        Only the looked-up rows are penalised, so a frequent user is shrunk in proportion to how often it
        appears, as in SGD matrix factorisation; 0 (a tensor) without ID columns.
        """
        if not self.id_factors:
            return torch.zeros((), device=next(self.parameters()).device)
        ids = batch["ids"]
        per_row = sum(
            factors(ids[:, j]).square().sum(-1) + bias(ids[:, j]).square().squeeze(-1)
            for j, (factors, bias) in enumerate(zip(self.id_factors, self.id_bias))
        )
        if row_weight is None:
            return per_row.mean()
        return (per_row * row_weight).sum() / row_weight.sum().clamp(min=1e-12)
