"""Linear probes: deterministic one-vs-rest logistic regressions on standardised features."""

import pytest
import torch

from emoreg.errors import ConfigError
from emoreg.evals.linear_probe import LinearProbe, train_linear_probes


def _two_clusters(n: int = 20, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    centres = torch.zeros(2, d)
    centres[0, 0], centres[1, 1] = 4.0, 4.0
    features = torch.cat([centres[0] + torch.randn(n, d, generator=generator),
                          centres[1] + torch.randn(n, d, generator=generator)])
    first = torch.arange(2 * n) < n
    return features, torch.stack([first, ~first], dim=1)


def test_probes_separate_classes_deterministically():
    features, positives = _two_clusters()
    probe = train_linear_probes(features, positives, l2=1e-2, steps=50)
    again = train_linear_probes(features, positives, l2=1e-2, steps=50)
    assert torch.equal(probe.weight, again.weight) and torch.equal(probe.bias, again.bias)
    assert probe.weight.shape == (5, 2) and probe.bias.shape == (2,) and probe.weight.dtype == torch.float64
    assert probe.train_accuracy == [1.0, 1.0]
    logits = probe.logits(features)
    assert logits.shape == (40, 2)
    assert torch.equal(logits > 0, positives)


def test_features_are_standardised_on_the_training_data():
    features, positives = _two_clusters()
    probe = train_linear_probes(features * 1000 + 7, positives, steps=50)
    assert torch.allclose(probe.mu, (features * 1000 + 7).to(torch.float64).mean(0))
    assert torch.allclose(probe.sigma, (features * 1000 + 7).to(torch.float64).std(0))
    assert torch.equal(probe.logits(features * 1000 + 7) > 0, positives)


def test_logits_formula():
    probe = LinearProbe(mu=torch.tensor([1.0, 0.0], dtype=torch.float64),
                        sigma=torch.tensor([2.0, 1.0], dtype=torch.float64),
                        weight=torch.tensor([[1.0], [-1.0]], dtype=torch.float64),
                        bias=torch.tensor([0.5], dtype=torch.float64))
    assert probe.train_accuracy == []
    assert probe.logits(torch.tensor([[3.0, 2.0]])).tolist() == [[-0.5]]  # (3 - 1) / 2 - (2 - 0) / 1 + 0.5


def test_stronger_l2_shrinks_the_weights():
    features, positives = _two_clusters()
    weak = train_linear_probes(features, positives, l2=1e-3, steps=50)
    strong = train_linear_probes(features, positives, l2=1.0, steps=50)
    assert strong.weight.norm() < weak.weight.norm()


def test_bad_shapes_and_one_class_probes_are_errors():
    features, positives = _two_clusters()
    with pytest.raises(ConfigError, match=r"features \[S, d\] and positives \[S, T\] must agree"):
        train_linear_probes(features[:-1], positives)
    with pytest.raises(ConfigError, match="must agree"):
        train_linear_probes(features[0], positives)
    with pytest.raises(ConfigError, match="positive and negative examples"):
        train_linear_probes(features, torch.ones(40, 1, dtype=torch.bool))
    with pytest.raises(ConfigError, match="positive and negative examples"):
        train_linear_probes(features, torch.zeros(40, 1, dtype=torch.bool))
