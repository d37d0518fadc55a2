"""Run by torchrun from test_distributed.py: score a tiny model on an initialised gloo group."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from conftest import tiny_batches, tiny_model

import deepcuts_fast as dc
from deepcuts_fast import cli
from deepcuts_fast.scoring.distributed import process_group

def criteria(granularity: str) -> list[str]:
    """Every criterion that scores at `granularity` (Fisher scores units only)."""
    return [c for c in dc.CRITERIA if granularity == "unit" or dc.CRITERIA[c].per_weight]


RUNS = {  # name -> score_run options
    "weight": dict(granularity="weight"),
    "unit-segments": dict(granularity="unit", checkpoint_every=2),  # 5 batches: rank 1 has none in the last
    "first-order": dict(granularity="unit", unit_method="first-order"),
}


def main(out: Path, cli_args: list[str]) -> int:
    """Join the torchrun group as the CLI does; score with every criterion under each option set
    (rank 0 writes the scores and run facts), then run `deepcuts score cli_args` in the same group
    (torchrun's store does not support a second init in one process)."""
    with process_group("cpu") as world:
        assert world.size == 2 and dist.get_backend() == "gloo"
        scores_with_every_criterion(out)
        return cli.main(["score", *cli_args])


def scores_with_every_criterion(out: Path) -> None:
    """Rank 0 saves every criterion's scores for each option set, and the run facts."""
    model, batches = tiny_model("bert"), tiny_batches(n_batches=5, seed=3)
    facts = {}
    for name, options in RUNS.items():
        run = dc.score_run(model, batches, criteria(options["granularity"]), noise_samples=3, noise_std=0.05, progress=False, **options)
        facts[name] = {"world_size": run.world_size, "batches_used": run.batches_used}
        if dist.get_rank() == 0:
            for crit, scores in run.scores.items():
                scores.save(out / f"{name}-{crit}.safetensors")
    if dist.get_rank() == 0:
        (out / "facts.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
