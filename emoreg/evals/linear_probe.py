"""Linear probes: one-vs-rest logistic regressions on activations, fitted deterministically.

The concealment suite (:mod:`emoreg.evals.suites.concealment`) trains one probe per target emotion on a model's
own story activations and reads the probes' logits at its prompts: a probe finds an emotion wherever the model
still represents it linearly, whether or not the regularised direction shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from emoreg.errors import ConfigError


@dataclass
class LinearProbe:
    """One-vs-rest logistic probes: ``logit = ((x - mu) / sigma) @ weight + bias``."""

    mu: torch.Tensor  # [d]
    sigma: torch.Tensor  # [d]
    weight: torch.Tensor  # [d, T]
    bias: torch.Tensor  # [T]
    train_accuracy: list[float] = field(default_factory=list)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Probe logits ``[N, T]`` for features ``[N, d]``."""
        x = (features.to(torch.float64) - self.mu) / self.sigma
        return x @ self.weight + self.bias


def train_linear_probes(
    features: torch.Tensor, positives: torch.Tensor, *, l2: float = 1e-2, steps: int = 300
) -> LinearProbe:
    """Train one logistic probe per column of ``positives`` ``[S, T]`` (bool) on ``features`` ``[S, d]``.

    Loss per probe: class-balanced mean binary cross-entropy + ``l2 * ||w||^2``; features are standardised with
    their own mean and std; all probes are fitted jointly (their losses are independent) by full-batch L-BFGS
    (strong Wolfe line search) from zero weights, in float64, so the result is deterministic.
    """
    if features.dim() != 2 or positives.dim() != 2 or features.shape[0] != positives.shape[0]:
        raise ConfigError(f"features [S, d] and positives [S, T] must agree, got {tuple(features.shape)} "
                          f"and {tuple(positives.shape)}")
    y = positives.to(torch.float64)
    n_pos = y.sum(0)
    if ((n_pos == 0) | (n_pos == y.shape[0])).any():
        raise ConfigError("every probe needs positive and negative examples")
    x64 = features.to(torch.float64)
    mu = x64.mean(0)
    sigma = x64.std(0).clamp(min=1e-6)
    x = (x64 - mu) / sigma
    n = y.shape[0]
    sample_weight = y * (n / (2 * n_pos)) + (1 - y) * (n / (2 * (n - n_pos)))
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight + bias
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=sample_weight,
                                                                      reduction="none").mean(0)
        loss = losses.sum() + l2 * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    predictions = (x @ weight + bias) > 0
    balanced = [
        float(0.5 * (predictions[y[:, t] > 0, t].double().mean() + (~predictions[y[:, t] == 0, t]).double().mean()))
        for t in range(y.shape[1])
    ]
    return LinearProbe(mu=mu, sigma=sigma, weight=weight, bias=bias, train_accuracy=balanced)
