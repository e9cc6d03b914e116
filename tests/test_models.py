"""Interactions: batched 1-vs-all scoring equals elementwise scoring and the textbook formulas."""

import math

import pytest
import torch

from distmap.config import ModelConfig
from distmap.models.interactions import make_interaction
from distmap.models.zoo import build_model

MODELS = ["transe", "distmult", "complex", "rotate"]


@pytest.mark.parametrize("name", MODELS)
def test_batched_scores_equal_pairwise(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, rank=6, init_scale=0.5), num_entities=9, num_base_relations=2)
    h = torch.tensor([0, 3, 8, 5])
    r = torch.tensor([0, 1, 2, 3])
    scores = model.score(h, r, 0, 9)
    q = model.query(h, r)
    cands = model.entities.block(0, 9)
    pairwise = model.interaction.score_pairs(q[:, None, :].expand(-1, 9, -1), cands[None].expand(4, -1, -1))
    torch.testing.assert_close(scores, pairwise, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_block_scores_concatenate_to_full(name: str) -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(name=name, rank=4, init_scale=0.3), num_entities=10, num_base_relations=1)
    h, r = torch.tensor([1, 2, 9]), torch.tensor([0, 1, 0])
    full = model.score(h, r, 0, 10)
    blocks = torch.cat([model.score(h, r, lo, min(lo + 3, 10)) for lo in range(0, 10, 3)], dim=1)
    torch.testing.assert_close(full, blocks)


def test_complex_matches_complex_arithmetic() -> None:
    torch.manual_seed(2)
    inter = make_interaction("complex")
    h, r, t = (torch.randn(5, 8) for _ in range(3))
    as_complex = [torch.complex(*x.chunk(2, dim=-1)) for x in (h, r, t)]
    expected = (as_complex[0] * as_complex[1] * as_complex[2].conj()).sum(-1).real
    torch.testing.assert_close(inter.score_pairs(inter.query(h, r), t), expected)


def test_distmult_and_transe_formulas() -> None:
    torch.manual_seed(3)
    h, r, t = (torch.randn(4, 5) for _ in range(3))
    dm = make_interaction("distmult")
    torch.testing.assert_close(dm.score_pairs(dm.query(h, r), t), (h * r * t).sum(-1))
    for p in (1, 2):
        te = make_interaction("transe", p)
        torch.testing.assert_close(te.score(te.query(h, r), t).diagonal(), -(h + r - t).norm(p=p, dim=-1))


def test_rotate_is_a_rotation() -> None:
    inter = make_interaction("rotate")
    h = torch.randn(3, 8)
    phase = torch.rand(3, 4) * 2 * math.pi
    q = inter.query(h, phase)
    modulus = lambda x: torch.linalg.vector_norm(torch.stack(x.chunk(2, dim=-1)), dim=0)  # noqa: E731
    torch.testing.assert_close(modulus(q), modulus(h))
    torch.testing.assert_close(inter.query(h, torch.zeros(3, 4)), h)


def test_complex_factors_are_moduli() -> None:
    inter = make_interaction("complex")
    x = torch.tensor([[3.0, 0.0, 4.0, 1.0]])
    f, _, _ = inter.factors(x, x, x)
    torch.testing.assert_close(f, torch.tensor([[5.0, 1.0]]))


def test_model_sizes_and_reciprocal_relations() -> None:
    model = build_model(ModelConfig(name="complex", rank=7), num_entities=11, num_base_relations=3)
    assert model.entities.weight.shape == (11, 14)
    assert model.relations.shape == (6, 14)
    rot = build_model(ModelConfig(name="rotate", rank=7), num_entities=11, num_base_relations=3)
    assert rot.relations.shape == (6, 7)


def test_complex_factors_have_finite_gradient_at_zero() -> None:
    x = torch.zeros(1, 4, requires_grad=True)
    f, _, _ = make_interaction("complex").factors(x, x, x)
    f.pow(3).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_initial_rows_do_not_depend_on_the_partition() -> None:
    cfg = ModelConfig(name="complex", rank=3, init_scale=0.1)
    whole = build_model(cfg, num_entities=9000, num_base_relations=2, seed=5)
    parts = [build_model(cfg, 9000, 2, seed=5, entity_range=r) for r in [(0, 4000), (4000, 8193), (8193, 9000)]]
    torch.testing.assert_close(torch.cat([p.entities.weight for p in parts]), whole.entities.weight, rtol=0, atol=0)
    assert all(torch.equal(p.relations, whole.relations) for p in parts)
    assert not torch.equal(build_model(cfg, 9000, 2, seed=6).entities.weight, whole.entities.weight)
