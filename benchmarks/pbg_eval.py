"""PyTorch-BigGraph's own filtered evaluation of a trained checkpoint; runs in the PBG venv, not distmap's.

Every entity is a candidate (``all_negs``, no sampled negatives) and known train/valid/test edges are
filtered (``FilteredRankingEvaluator``, as PBG's FB15k example); PBG counts a tie against the true
edge, so its MRR is comparable to distmap's pessimistic-tie MRR. Prints one JSON line of PBG's metrics.

    .pbg-venv/bin/python benchmarks/pbg_eval.py CONFIG.py TRAIN_P VALID_P TEST_P
"""

import json
import sys

import attr
from torchbiggraph.config import ConfigFileLoader
from torchbiggraph.eval import do_eval_and_report_stats
from torchbiggraph.filtered_eval import FilteredRankingEvaluator


def main() -> None:
    config_path, train, valid, test = sys.argv[1:5]
    config = ConfigFileLoader().load_config(config_path)
    relations = [attr.evolve(r, all_negs=True) for r in config.relations]
    config = attr.evolve(config, edge_paths=[test], relations=relations, num_uniform_negs=0, num_batch_negs=0)
    evaluator = FilteredRankingEvaluator(config, [test, valid, train])
    *_, (_, _, stats) = do_eval_and_report_stats(config, evaluator=evaluator)
    print(json.dumps({**stats.metrics, "count": stats.count}))


if __name__ == "__main__":
    main()
