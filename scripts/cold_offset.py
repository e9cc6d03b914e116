"""How far a cold-start model's text rows intrude on warm answers: test (or valid) MRR by cold bucket
with every stand-in row's score (an entity ranked from its features alone) lowered by ``b``.

    python scripts/cold_offset.py RUN [--split valid] 0 1 2 4 inf

``b = inf`` takes the stand-in entities out of the candidates: what the warm queries score when no
text row can outrank their answer. Buckets as ``distmap evaluate --breakdown``'s ``cold start`` group
(warm: both entities in some train triple; answer / query cold: that entity has none).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from distmap.config import load_config
from distmap.data.kg import KnowledgeGraph, add_reciprocals
from distmap.restore import load_best_model
from distmap.train.breakdown import breakdown_of
from distmap.train.evaluate import FilterIndex, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("offsets", type=float, nargs="+")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    args = parser.parse_args()
    cfg = load_config(args.run / "config.yaml", [])
    kg = KnowledgeGraph.load(cfg.data.path)
    model, _ = load_best_model(args.run, cfg, kg, torch.device("cpu"))
    model.eval()
    stand_in = getattr(model, "structured", torch.ones(kg.num_entities, dtype=torch.bool)).logical_not()
    triples = kg.test if args.split == "test" else kg.valid
    known = FilterIndex.build(add_reciprocals(kg.all_triples(), kg.num_relations), kg.num_entities)
    base = model.scorer()
    print(f"{args.run.name}, {args.split} split, {int(stand_in.sum())} stand-in entities")
    print("| b | overall | warm | answer cold | query cold |\n|---|---|---|---|---|")
    for b in args.offsets:

        def scorer(h: torch.Tensor, r: torch.Tensor, lo: int, hi: int, b: float = b) -> torch.Tensor:
            scores = base(h, r, lo, hi)
            return torch.where(stand_in[lo:hi][None, :], scores - b, scores)

        result = evaluate(
            scorer, triples, num_relations=kg.num_relations, filter_index=known, num_entities=kg.num_entities
        )
        buckets = breakdown_of(kg, result, args.split)  # the ``cold start`` group, as --breakdown has it
        cold = buckets.group("cold")
        cells = [buckets.overall, cold["warm"], cold["answer cold"], cold["query cold"]]
        shown = "inf" if math.isinf(b) else f"{b:g}"
        print(f"| {shown} | " + " | ".join(f"{c.mrr:.4f}" if c.queries else "—" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
