"""Peak memory of `distmap export` from a sharded checkpoint: below one row file, far below the table.

Writes a synthetic dataset of ``--rows`` entities and a sharded checkpoint of ``--files`` row files
as a sharded run leaves them (per file: ``weight``, ``best`` and Adagrad's ``opt.sum``, each
rows x ``--dim`` float32), then, each in a fresh process, (a) exports it with ``export_run``
(``--chunk-rows`` rows per read) and (b) reads the whole best table with ``entity_rows(0, N)`` for
comparison. Memory = peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` just before the call)
minus the RSS at that moment, so imports are not counted; export first exports a 1,000-row run in the same
process, so libraries loaded on first use are reported apart as a fixed cost. The target:
export's memory below one row file plus a margin of 64 MiB.

    python benchmarks/export_memory.py [--rows 200000] [--dim 256] [--files 4] [--chunk-rows 16384]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from record import recorded  # benchmarks/ is on the path when run as a script

from distmap.config import config_from_dict
from distmap.data.prepare import prepare_dataset
from distmap.distributed.partition import row_ranges
from distmap.distributed.shard_checkpoint import COMMON, save_rows
from distmap.export import export_run
from distmap.restore import entity_rows, find_best
from distmap.train.checkpoint import save_checkpoint

MARGIN = 64 << 20
MIB = 1 << 20


def rss_now() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def start_peak() -> int:
    """Reset this process's peak RSS (VmHWM) to its RSS now, and return that: importing torch peaks
    far above where it settles, and ``ru_maxrss`` cannot be reset."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_now()


def rss_peak() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def build(root: Path, rows: int, dim: int, files: int) -> Path:
    """A dataset of ``rows`` entities on a chain and a run folder with a sharded checkpoint; returns the run folder."""
    root.mkdir()
    raw = root / "raw"
    raw.mkdir()
    chain = "".join(f"e{i:09d}\tnext\te{i + 1:09d}\n" for i in range(rows - 1))
    for split in ("train", "valid", "test"):
        (raw / f"{split}.tsv").write_text(chain if split == "train" else chain[: chain.index("\n") + 1])
    prepare_dataset(raw, root / "dataset", log=lambda _: None)
    run_dir = root / "runs" / "bench"
    folder = root / "runs" / "ray_results" / "bench" / "checkpoint_000000"
    generator = torch.Generator().manual_seed(0)
    for lo, hi in row_ranges(rows, files):
        save_rows(
            folder, lo, hi, {k: torch.randn(hi - lo, dim, generator=generator) for k in ("weight", "best", "opt.sum")}
        )
    relations = torch.randn(2, dim, generator=generator)
    save_checkpoint(folder / COMMON, {"epoch": 1, "best_epoch": 1, "num_entities": rows, "best_relations": relations})
    cfg = config_from_dict(
        {
            "data": {"path": str(root / "dataset")},
            "model": {"name": "complex", "rank": dim // 2},
            "track": {"enabled": False},
        }
    )
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    return run_dir


def export_case(run_dir: Path, warm_up_dir: Path, chunk_rows: int, queue: mp.Queue) -> None:
    """Export a small run first, so that libraries loaded on first use (Parquet writer, codecs,
    torch's zip reader) count as the fixed cost they are; then the measured export."""
    from distmap.config import load_config

    start = start_peak()
    export_run(warm_up_dir, load_config(warm_up_dir / "config.yaml"), warm_up_dir.parent / "warm.parquet", chunk_rows)
    fixed = rss_peak() - start
    cfg = load_config(run_dir / "config.yaml")
    start = start_peak()
    export_run(run_dir, cfg, run_dir.parent / "emb.parquet", chunk_rows=chunk_rows)
    queue.put((fixed, rss_peak() - start))


def whole_table_case(run_dir: Path, rows: int, queue: mp.Queue) -> None:
    best = find_best(run_dir, rows)
    start = start_peak()
    table = entity_rows(best, 0, rows)
    queue.put(rss_peak() - start)
    del table


def in_fresh_process(target: object, *args: object) -> Any:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="entities (default: 200000)")
    parser.add_argument("--dim", type=int, default=256, help="floats per entity row (default: 256)")
    parser.add_argument("--files", type=int, default=4, help="row files = workers of the run (default: 4)")
    parser.add_argument("--chunk-rows", type=int, default=16384, help="export's rows per read (default: 16384)")
    args = parser.parse_args()
    with recorded("export_memory", args) as record:
        measure(args, record.values)


def measure(args: argparse.Namespace, values: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="distmap-export-bench-") as tmp:
        run_dir = build(Path(tmp) / "big", args.rows, args.dim, args.files)
        warm_up_dir = build(Path(tmp) / "small", 1000, args.dim, args.files)
        row_file = max(p.stat().st_size for p in run_dir.parent.glob("ray_results/bench/*/rows-*.pt"))
        fixed, export_growth = in_fresh_process(export_case, run_dir, warm_up_dir, args.chunk_rows)
        whole_growth = in_fresh_process(whole_table_case, run_dir, args.rows)
    table = args.rows * args.dim * 4
    values.update(
        table_bytes=table,
        row_file_bytes=row_file,
        fixed_growth_bytes=fixed,
        export_growth_bytes=export_growth,
        whole_table_growth_bytes=whole_growth,
    )
    print(
        f"{args.rows:,} entities x {args.dim} float32 in {args.files} row files; "
        f"export reads {args.chunk_rows:,} rows at a time"
    )
    print("| what | MiB |\n|---|---:|")
    print(f"| best table (all rows) | {table / MIB:.0f} |")
    print(f"| one row file (weight + best + opt.sum) | {row_file / MIB:.0f} |")
    print(f"| one read of export (chunk rows x dim x 4 B) | {args.chunk_rows * args.dim * 4 / MIB:.0f} |")
    print(f"| peak RSS growth: export_run of 1,000 rows first (fixed cost of first use) | {fixed / MIB:.0f} |")
    print(f"| peak RSS growth: export_run, then | {export_growth / MIB:.0f} |")
    print(f"| peak RSS growth: entity_rows(0, N), the whole table | {whole_growth / MIB:.0f} |")
    ok = export_growth < row_file + MARGIN
    print(f"export below one row file + {MARGIN // MIB} MiB: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
