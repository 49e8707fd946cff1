"""Baseline routers trained from per-expert correctness: the field's routing methods in MoT's protocol.

Every router here is ``Cls(input_dim, num_experts, top_k, **options)`` -> ``RoutingDecision`` like the
built-ins, and learns with ``fit(features [N, D], correctness [N, E])`` where ``correctness[n, e]`` is
expert ``e``'s score on training item ``n`` (1/0 for accuracy, any value in [0, 1] otherwise).  Their
learned state is buffers and parameters, so ``state_dict`` saves it (``mot.routing.checkpoint``).

- ``fixed``: always expert ``expert`` (each expert alone as a row of the same harness).
- ``cluster`` (Avengers-style, Zhang et al. 2025): k-means over the training items' embeddings; each
  cluster routes to the expert with the best mean score on its training items (ties: the expert with
  the best overall score); a query goes to its nearest centroid.  Features are L2-normalised first
  (cosine geometry, as sentence embeddings are compared).
- ``routerdc`` (RouterDC, Chen et al. 2024): a trainable projection of the (frozen) sentence features
  and one learnable embedding per expert; the routing score is their cosine similarity over a
  temperature.  Trained with the dual contrastive loss: *sample-expert* (for each item, each of its
  ``top_k_positive`` best experts against its ``top_k_negative`` worst) and *sample-sample* (items in
  the same k-means cluster of the training features are positives, other clusters' items negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mot.routing.decision import RoutingDecision
from mot.routing.registry import register_router
from mot.routing.routers import top_k_decision

__all__ = ["ClusterRouter", "FixedRouter", "RouterDC", "kmeans"]


def _check_fit(features: torch.Tensor, correctness: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    if features.dim() != 2 or correctness.dim() != 2 or features.shape[0] != correctness.shape[0]:
        raise ValueError(f"fit expects features [N, D] and correctness [N, E] with the same N, got "
                         f"{tuple(features.shape)} and {tuple(correctness.shape)}")
    if correctness.shape[1] != num_experts:
        raise ValueError(f"correctness has {correctness.shape[1]} experts, the router {num_experts}")
    if features.shape[0] == 0:
        raise ValueError("fit needs at least one training item")
    return features.float(), correctness.float()


def kmeans(x: torch.Tensor, k: int, *, iterations: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centroids [k', D], assignment [N])`` of k-means (k-means++ start, seeded, Euclidean);
    ``k' = min(k, N)``.  Empty clusters keep their previous centroid."""
    n = x.shape[0]
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=g))
    centroids = [x[first]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centroids)).min(dim=1).values.pow(2)
        total = float(d2.sum())
        if total <= 0:
            centroids.append(x[int(torch.randint(n, (1,), generator=g))])
            continue
        centroids.append(x[int(torch.multinomial(d2 / total, 1, generator=g))])
    c = torch.stack(centroids).clone()
    assign = torch.cdist(x, c).argmin(dim=1)
    for _ in range(iterations):
        for j in range(k):
            members = assign == j
            if members.any():
                c[j] = x[members].mean(dim=0)
        new = torch.cdist(x, c).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return c, assign


@register_router("fixed")
class FixedRouter(nn.Module):
    """Always routes to ``expert`` (the others follow in index order when ``top_k > 1``)."""

    def __init__(self, input_dim: int, num_experts: int, top_k: int = 1, *, expert: int = 0) -> None:
        super().__init__()
        if not 0 <= expert < num_experts:
            raise ValueError(f"expert must be in [0, {num_experts}), got {expert}")
        self.input_dim, self.num_experts, self.top_k, self.expert = input_dim, num_experts, top_k, expert
        logits = -torch.arange(num_experts, dtype=torch.float32) * 1e-3
        logits[expert] = 10.0
        # a (frozen) parameter rather than a buffer: models that read their router's device and dtype from
        # its parameters (MixtureOfThoughts) accept it
        self.choice = nn.Parameter(logits, requires_grad=False)

    def fit(self, features: torch.Tensor, correctness: torch.Tensor) -> dict:
        _check_fit(features, correctness, self.num_experts)
        return {}

    def forward(self, features: torch.Tensor) -> RoutingDecision:
        return top_k_decision(self.choice.to(features.device).expand(features.shape[0], -1).clone(), self.top_k)


@register_router("cluster")
class ClusterRouter(nn.Module):
    """Avengers-style cluster routing (see the module docstring)."""

    def __init__(self, input_dim: int, num_experts: int, top_k: int = 1, *, num_clusters: int = 16,
                 iterations: int = 50, seed: int = 0) -> None:
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        self.input_dim, self.num_experts, self.top_k = input_dim, num_experts, top_k
        self.num_clusters, self.iterations, self.seed = num_clusters, iterations, seed
        self.register_buffer("centroids", torch.zeros(num_clusters, input_dim))
        self.register_buffer("cluster_scores", torch.zeros(num_clusters, num_experts))
        self.register_buffer("fitted_clusters", torch.tensor(0))

    def fit(self, features: torch.Tensor, correctness: torch.Tensor) -> dict:
        x, y = _check_fit(features, correctness, self.num_experts)
        x = F.normalize(x, dim=-1)
        centroids, assign = kmeans(x, self.num_clusters, iterations=self.iterations, seed=self.seed)
        k = centroids.shape[0]
        overall = y.mean(dim=0)
        scores = torch.zeros(self.num_clusters, self.num_experts)
        for j in range(k):
            members = assign == j
            # ties between experts inside a cluster go to the best expert overall
            scores[j] = y[members].mean(dim=0) + 1e-6 * overall
        self.centroids.zero_()
        self.centroids[:k] = centroids
        self.cluster_scores.copy_(scores)
        self.fitted_clusters.fill_(k)
        return {"clusters": k, "sizes": torch.bincount(assign, minlength=k).tolist()}

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        k = max(int(self.fitted_clusters), 1)
        x = F.normalize(features.float(), dim=-1)
        return torch.cdist(x, self.centroids[:k].to(x.device)).argmin(dim=1)

    def forward(self, features: torch.Tensor) -> RoutingDecision:
        scores = self.cluster_scores.to(features.device)[self.assign(features)]
        return top_k_decision(scores * 20.0, self.top_k)


@register_router("routerdc")
class RouterDC(nn.Module):
    """RouterDC: dual contrastive routing (see the module docstring)."""

    def __init__(self, input_dim: int, num_experts: int, top_k: int = 1, *, embed_dim: int = 128,
                 hidden_dim: int = 256, temperature: float = 0.2, top_k_positive: int = 1,
                 top_k_negative: int = 1, sample_weight: float = 1.0, num_clusters: int = 8,
                 steps: int = 300, learning_rate: float = 1e-3, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.input_dim, self.num_experts, self.top_k = input_dim, num_experts, top_k
        self.temperature, self.top_k_positive, self.top_k_negative = temperature, top_k_positive, top_k_negative
        self.sample_weight, self.num_clusters, self.steps = sample_weight, num_clusters, steps
        self.learning_rate, self.batch_size, self.seed = learning_rate, batch_size, seed
        g = torch.Generator().manual_seed(seed)
        self.project = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        with torch.no_grad():
            for layer in (self.project[0], self.project[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / layer.weight.shape[1] ** 0.5)
                layer.bias.zero_()
        self.expert_embeddings = nn.Parameter(torch.randn(num_experts, embed_dim, generator=g))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(features.to(self.expert_embeddings.dtype)), dim=-1)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return self.embed(features) @ F.normalize(self.expert_embeddings, dim=-1).T / self.temperature

    def forward(self, features: torch.Tensor) -> RoutingDecision:
        return top_k_decision(self.scores(features), self.top_k)

    def sample_expert_loss(self, logits: torch.Tensor, correctness: torch.Tensor) -> torch.Tensor:
        """For each item: each of its ``top_k_positive`` best experts against its ``top_k_negative`` worst."""
        e = self.num_experts
        kp, kn = min(self.top_k_positive, e - 1) or 1, min(self.top_k_negative, e - 1) or 1
        order = torch.argsort(correctness + 1e-4 * torch.arange(e, 0, -1, device=correctness.device),
                              dim=1, descending=True)
        pos, neg = order[:, :kp], order[:, e - kn:]
        neg_logits = logits.gather(1, neg)  # [N, kn]
        loss = logits.new_zeros(())
        for j in range(kp):
            p = logits.gather(1, pos[:, j:j + 1])  # [N, 1]
            informative = correctness.gather(1, pos[:, j:j + 1])[:, 0] > correctness.gather(1, neg).max(dim=1).values
            terms = -(p[:, 0] - torch.logsumexp(torch.cat([p, neg_logits], dim=1), dim=1))
            if informative.any():
                loss = loss + terms[informative].mean()
        return loss / kp

    def sample_sample_loss(self, z: torch.Tensor, clusters: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """InfoNCE: each item against one item of its own cluster and one of every other cluster (in batch)."""
        sim = z @ z.T / self.temperature
        n = z.shape[0]
        same = clusters[:, None] == clusters[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        positive_ok = same & ~eye
        rows = positive_ok.any(dim=1) & (~same).any(dim=1)
        if not rows.any():
            return sim.new_zeros(())
        noise = torch.rand(n, n, generator=generator).to(z.device)
        pos = torch.where(positive_ok, noise, torch.full_like(noise, -1.0)).argmax(dim=1)
        loss = -(sim[torch.arange(n), pos] - torch.logsumexp(sim.masked_fill(same & ~(
            torch.arange(n, device=z.device)[None, :] == pos[:, None]), float("-inf")), dim=1))
        return loss[rows].mean()

    def fit(self, features: torch.Tensor, correctness: torch.Tensor) -> dict:
        x, y = _check_fit(features, correctness, self.num_experts)
        _, clusters = kmeans(F.normalize(x, dim=-1), self.num_clusters, seed=self.seed)
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=0.0)
        self.train()
        history = []
        n = x.shape[0]
        for _ in range(self.steps):
            idx = torch.randperm(n, generator=g)[:self.batch_size]
            z = self.embed(x[idx])
            logits = z @ F.normalize(self.expert_embeddings, dim=-1).T / self.temperature
            loss = self.sample_expert_loss(logits, y[idx])
            if self.sample_weight:
                loss = loss + self.sample_weight * self.sample_sample_loss(z, clusters[idx], g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
        self.eval()
        return {"final_loss": history[-1] if history else None, "steps": self.steps}
