"""Loss pieces of the epoch loop, checked against hand-computed values."""

import torch
import torch.nn.functional as F

from distmap.train.objective import Objective, frequency_class_weights


def test_frequency_class_weights_follow_otkge() -> None:
    examples = torch.tensor([[0, 0, 1], [2, 0, 1], [1, 0, 2], [0, 1, 1]])
    weights = frequency_class_weights(examples, num_entities=4)
    # target counts 0, 3, 1, 0 -> count / max * 0.9 + 0.1
    torch.testing.assert_close(weights, torch.tensor([0.1, 1.0, 0.4, 0.1]))


def test_n3_and_l2_penalties() -> None:
    factors = (torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[3.0, 1.0]]))
    n3 = Objective("n3", reg_weight=0.1).penalty(factors, batch_size=2)
    l2 = Objective("l2", reg_weight=0.1).penalty(factors, batch_size=2)
    assert torch.isclose(n3, torch.tensor(0.1 * (1 + 8 + 0.125 + 27 + 1) / 2))
    assert torch.isclose(l2, torch.tensor(0.1 * (1 + 4 + 0.25 + 9 + 1) / 2))
    assert Objective("none", reg_weight=0.1).penalty(factors, 2) == 0


def test_objective_is_cross_entropy_plus_penalty() -> None:
    torch.manual_seed(0)
    scores, targets = torch.randn(5, 7), torch.tensor([0, 3, 6, 2, 2])
    factors = (torch.ones(5, 2),)
    weight = torch.linspace(0.1, 1.0, 7)
    objective = Objective("l2", reg_weight=0.5, label_smoothing=0.1, class_weight=weight)
    total, fit = objective(scores, torch.arange(5), targets, factors)
    expected_fit = F.cross_entropy(scores, targets, weight=weight, label_smoothing=0.1)
    torch.testing.assert_close(fit, expected_fit)
    torch.testing.assert_close(total, expected_fit + 0.5 * 10 / 5)
