"""distmap's sampled objective beside PyTorch-BigGraph, in one invocation: same graph, rank, negatives, cores.

``speed``: a synthetic graph of ``--entities`` entities and ``--edges`` uniform random edges; one
epoch of each, edges/s. PBG: ``torchbiggraph_import_from_tsv`` then ``torchbiggraph_train`` (its
documented commands, from its own venv, ``--pbg-bin``), ComplEx as ``complex_diagonal`` + ``dot``,
``softmax`` loss, ``num_uniform_negs`` = S, ``workers`` = 2 Hogwild processes, batch 1,000; its time
is the train command's wall time, and separately its own "Processed N edges in T s" compute time.
distmap: ``train.objective: sampled`` with S candidates per step on 2 gloo workers (1 thread
each), row-wise Adagrad, batch 1,000 queries; its time is the epoch's (the engine's own timer). An
edge trains both directions in both: PBG scores lhs and rhs negatives of each edge, distmap trains
each triple and its reciprocal, so edges/s = graph edges per epoch / epoch seconds for both.

``quality``: a prepared dataset (``--dataset``); each of distmap exact, distmap sampled and (with
``--pbg``) PBG trains epoch after epoch while its training time stays within ``--budget`` seconds,
then its test split is ranked against every entity, filtered. PBG counts a tie against the true
edge (pessimistic); distmap's pessimistic-tie MRR is the comparable column. PBG re-runs its train
command with one more epoch each time (it resumes from its checkpoint); those restarts count
against its budget.

    python benchmarks/pbg_compare.py speed --entities 1e6 --edges 500000
    python benchmarks/pbg_compare.py quality --dataset datasets/fb-img --rank 100 --budget 450 --pbg
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from record import cpu_name, recorded  # benchmarks/ is on the path when run as a script

from distmap.config import config_from_dict
from distmap.data.kg import KnowledgeGraph
from distmap.data.prepare import prepare_dataset
from distmap.distributed.collectives import free_port
from distmap.distributed.engine import ShardedEngine

BENCH = Path(__file__).resolve().parent
PBG_CONFIG = """
def get_torchbiggraph_config():
    return dict(
        entity_path={entities!r},
        edge_paths={edge_paths!r},
        checkpoint_path={checkpoint!r},
        entities={{"all": {{"num_partitions": 1}}}},
        relations=[{{"name": "all_edges", "lhs": "all", "rhs": "all", "operator": "complex_diagonal"}}],
        dynamic_relations=True,
        dimension={dimension},
        global_emb=False,
        comparator="dot",
        loss_fn="softmax",
        num_uniform_negs={negatives},
        batch_size={batch},
        lr={lr},
        num_epochs={epochs},
        workers={workers},
        eval_fraction=0,
    )
"""


@dataclass(frozen=True)
class Setting:
    rank: int  # distmap's ComplEx rank; PBG's dimension is 2 × rank (real and imaginary parts)
    candidates: int  # distmap's S = PBG's num_uniform_negs
    batch: int
    lr: float
    reg_weight: float
    workers: int


def write_tsv(path: Path, triples: torch.Tensor, entities: tuple[str, ...], relations: tuple[str, ...]) -> Path:
    lines = (f"{entities[h]}\t{relations[r]}\t{entities[t]}\n" for h, r, t in triples.tolist())
    path.write_text("".join(lines), encoding="utf-8")
    return path


class PBG:
    """PyTorch-BigGraph driven through its own commands, from its own venv."""

    def __init__(self, bin_dir: Path, work: Path, kg: KnowledgeGraph, s: Setting) -> None:
        self.bin, self.work = bin_dir, work
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        self.splits = [work / f"{split}_p" for split in ("train", "valid", "test")]
        tsv = [write_tsv(work / f"{split}.tsv", kg.splits[split], kg.entities, kg.relations) for split in kg.splits]
        common = {
            "entities": str(work / "entities"),
            "checkpoint": str(work / "model"),
            "dimension": 2 * s.rank,
            "negatives": s.candidates,
            "batch": s.batch,
            "lr": s.lr,
            "workers": s.workers,
        }
        self.config = self._config("config.py", [str(p) for p in self.splits[:1]], common)
        importing = self._config("import_config.py", [str(p) for p in self.splits], common)
        self._run(
            "torchbiggraph_import_from_tsv", "--lhs-col", "0", "--rel-col", "1", "--rhs-col", "2", importing, *tsv
        )

    def _config(self, name: str, edge_paths: list[str], common: dict[str, Any]) -> Path:
        path = self.work / name
        path.write_text(PBG_CONFIG.format(edge_paths=edge_paths, epochs=1, **common), encoding="utf-8")
        return path

    def _run(self, command: str, *args: Any) -> str:
        done = subprocess.run(
            [str(self.bin / command), *map(str, args)], capture_output=True, text=True, check=False, cwd=self.work
        )
        if done.returncode:
            raise RuntimeError(f"{command} failed:\n{done.stderr[-3000:]}")
        return done.stdout + done.stderr

    def train(self, epochs: int) -> tuple[float, float]:
        """Train up to ``epochs`` (resuming its checkpoint): (wall seconds, PBG's own compute seconds)."""
        start = time.perf_counter()
        log = self._run("torchbiggraph_train", self.config, "-p", f"num_epochs={epochs}")
        compute = sum(float(x) for x in re.findall(r"Processed \d+ edges in ([\d.]+) s", log))
        return time.perf_counter() - start, compute

    def evaluate(self) -> dict[str, float]:
        python = self.bin / "python"
        done = subprocess.run(
            [str(python), str(BENCH / "pbg_eval.py"), str(self.config), *map(str, self.splits)],
            capture_output=True,
            text=True,
            check=True,
            cwd=self.work,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


def distmap_config(dataset: Path, objective: str, s: Setting, out: Path) -> dict[str, Any]:
    return {
        "data": {"path": str(dataset)},
        "model": {"name": "complex", "rank": s.rank, "init_scale": 1e-3},
        "train": {
            "batch_size": s.batch,
            "lr": s.lr,
            "reg_weight": s.reg_weight,
            "objective": objective,
            "candidates": s.candidates,
            "optimizer": "rowwise_adagrad" if objective == "sampled" else "adagrad",
            "allow_leaky_valid": True,
        },
        "track": {"enabled": False, "output_dir": str(out)},
        "scale": {"workers": s.workers},
    }


def _distmap_worker(
    rank: int, size: int, port: int, raw: dict[str, Any], epochs: int, budget: float, out: str, evaluate: bool
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    torch.set_num_threads(1)
    try:
        cfg = config_from_dict(raw)
        engine = ShardedEngine(cfg, KnowledgeGraph.load(cfg.data.path), torch.device("cpu"), None, lambda *_: None)
        seconds: list[float] = []
        while not seconds or (len(seconds) < epochs if epochs else sum(seconds) + seconds[-1] <= budget):
            # the slowest worker's epoch time, so that all workers decide alike whether another fits
            took = torch.tensor([engine.train_epoch(f"epoch {len(seconds) + 1}").seconds])
            dist.all_reduce(took, op=dist.ReduceOp.MAX)
            seconds.append(float(took))
        result: dict[str, Any] = {"epoch_seconds": seconds, "examples": engine.num_examples}
        if evaluate:
            test = engine.evaluate("test")
            result["mrr"] = {tie: test.with_tie(tie).metrics["both"]["mrr"] for tie in ("realistic", "pessimistic")}
        if rank == 0:
            Path(out).write_text(json.dumps(result), encoding="utf-8")
    finally:
        dist.destroy_process_group()


def run_distmap(raw: dict[str, Any], s: Setting, out: Path, epochs: int = 0, budget: float = 0) -> dict[str, Any]:
    args = (s.workers, free_port(), raw, epochs, budget, str(out), epochs == 0)
    mp.start_processes(_distmap_worker, args=args, nprocs=s.workers, join=True, start_method="spawn")
    return json.loads(out.read_text(encoding="utf-8"))


def synthetic(work: Path, entities: int, edges: int, relations: int, seed: int = 0) -> Path:
    """A prepared dataset of uniform random edges (train) plus 1,000 valid and 1,000 test edges."""
    g = torch.Generator().manual_seed(seed)
    n = edges + 2000
    triples = torch.stack(
        [
            torch.randint(0, entities, (n,), generator=g),
            torch.randint(0, relations, (n,), generator=g),
            torch.randint(0, entities, (n,), generator=g),
        ],
        dim=1,
    )
    names = tuple(f"e{i:08d}" for i in range(entities))
    rels = tuple(f"r{i:04d}" for i in range(relations))
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "entities.tsv").write_text("entity\n" + "".join(f"{e}\n" for e in names), encoding="utf-8")
    for split, part in zip(("train", "valid", "test"), triples.split([edges, 1000, 1000]), strict=True):
        write_tsv(raw / f"{split}.tsv", part, names, rels)
    prepare_dataset(raw, work / "dataset", overwrite=True, log=lambda _: None)
    return work / "dataset"


def speed(args: argparse.Namespace, s: Setting, values: dict[str, Any]) -> None:
    dataset = synthetic(args.work, args.entities, args.edges, args.relations)
    kg = KnowledgeGraph.load(dataset)
    print(
        f"graph: {kg.num_entities:,} entities, {len(kg.train):,} train edges, {kg.num_relations} relations", flush=True
    )
    pbg = PBG(args.pbg_bin, args.work / "pbg", kg, s)
    wall, compute = pbg.train(1)
    print(f"  PBG: {wall:.1f} s wall, {compute:.1f} s compute", flush=True)
    ours = run_distmap(
        distmap_config(dataset, "sampled", s, args.work / "runs"), s, args.work / "distmap.json", epochs=1
    )
    seconds = ours["epoch_seconds"][0]
    edges = len(kg.train)
    values.update(pbg_wall_s=wall, pbg_compute_s=compute, distmap_epoch_s=seconds, edges=edges)
    print("\n| system | epoch s | edges/s | speed vs PBG's wall time |\n|---|---|---|---|")
    print(f"| PyTorch-BigGraph 1.0.0, train command wall time | {wall:.1f} | {edges / wall:,.0f} | 1.00 |")
    print(f"| PyTorch-BigGraph, its own compute time | {compute:.1f} | {edges / compute:,.0f} | {wall / compute:.2f} |")
    print(f"| distmap sampled, epoch time | {seconds:.1f} | {edges / seconds:,.0f} | {wall / seconds:.2f} |")


def quality(args: argparse.Namespace, s: Setting, values: dict[str, Any]) -> None:
    kg = KnowledgeGraph.load(args.dataset)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{args.dataset}: {kg.num_entities:,} entities, {len(kg.train):,} train edges; budget {args.budget:.0f} s")
    print(
        "\n| system | epochs | training s | test MRR (pessimistic ties) | test MRR (realistic) |\n|---|---|---|---|---|"
    )
    for objective in args.objectives:
        raw = distmap_config(args.dataset, objective, s, args.work / "runs")
        result = run_distmap(raw, s, args.work / f"{objective}.json", budget=args.budget)
        mrr, spent = result["mrr"], sum(result["epoch_seconds"])
        values[objective] = {"epoch_seconds": result["epoch_seconds"], "mrr": mrr}
        print(
            f"| distmap {objective} | {len(result['epoch_seconds'])} | {spent:.0f} | {mrr['pessimistic']:.4f}"
            f" | {mrr['realistic']:.4f} |",
            flush=True,
        )
    if args.pbg:
        pbg = PBG(args.pbg_bin, args.work / "pbg", kg, s)
        spent, last, epochs = 0.0, 0.0, 0
        while not epochs or spent + last <= args.budget:
            epochs += 1
            last = pbg.train(epochs)[0]
            spent += last
        metrics = pbg.evaluate()
        values["pbg"] = {"epochs": epochs, "training_s": spent, "metrics": metrics}
        print(f"| PyTorch-BigGraph | {epochs} | {spent:.0f} | {metrics['mrr']:.4f} | — |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["speed", "quality"])
    parser.add_argument("--entities", type=lambda x: int(float(x)), default=1_000_000)
    parser.add_argument("--edges", type=lambda x: int(float(x)), default=500_000)
    parser.add_argument("--relations", type=int, default=100)
    parser.add_argument("--dataset", type=Path)
    parser.add_argument("--objectives", type=lambda x: x.split(","), default=["exact", "sampled"])
    parser.add_argument("--budget", type=float, default=450.0, help="training seconds per system (quality)")
    parser.add_argument("--pbg", action="store_true", help="quality: train and evaluate PBG too")
    parser.add_argument("--rank", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--reg-weight", type=float, default=0.0025)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pbg-bin", type=Path, default=BENCH.parent / ".pbg-venv" / "bin")
    parser.add_argument("--work", type=Path, default=Path("/tmp/distmap-pbg"))
    args = parser.parse_args()
    s = Setting(args.rank, args.candidates, args.batch_size, args.lr, args.reg_weight, args.workers)
    with recorded(f"pbg_compare_{args.mode}", args) as record:
        print(
            f"# benchmarks/pbg_compare.py {args.mode} · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {cpu_name()} · "
            f"{os.cpu_count()} CPUs · {s}",
            flush=True,
        )
        (speed if args.mode == "speed" else quality)(args, s, record.values)


if __name__ == "__main__":
    main()
