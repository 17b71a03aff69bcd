"""DDP on CPU: torchrun --nproc_per_node=2 (gloo) trains a few steps; both ranks end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.config import REPO_ROOT

WORKER = r'''
import hashlib, json, os, sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from core.config import config_from_dict
from core.distributed import DistInfo, cleanup_distributed
from core.evaluate import predict_logits
from core.trainer import make_loader, train

cfg = config_from_dict(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
result = train(cfg)
rank = int(os.environ["RANK"])
digest = hashlib.sha256()
for key, value in sorted(result.last_model.state_dict().items()):
    digest.update(key.encode())
    digest.update(value.detach().cpu().contiguous().numpy().tobytes())
val = result.datasets["val"]
gathered, rows = predict_logits(result.last_model, make_loader(val, cfg, result.info, train=False), result.info)
record = {"checksum": digest.hexdigest(), "world_size": result.info.world_size, "rows": rows.tolist(),
          "history": result.history, "per_rank_batches": len(make_loader(result.datasets["train"], cfg,
                                                                         result.info, train=True))}
if rank == 0:
    single, _ = predict_logits(result.last_model, make_loader(val, cfg, DistInfo(), train=False), DistInfo())
    record["max_gather_diff"] = float(np.abs(single - gathered).max())
(out / f"rank{rank}.json").write_text(json.dumps(record))
cleanup_distributed()
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_two_cpu_ranks_end_identical(shared_data: Path, tmp_path: Path):
    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    train = df[df.split == "train"]
    # 15 val rows: an odd count, so the DistributedSampler pads one rank and the gather must drop the repeat.
    rows = pd.concat([train[train.stored_size == "64x64"].head(16), train[train.stored_size != "64x64"].head(16),
                      df[df.split == "val"].head(15), df[df.split == "test"].head(8)])
    rows.to_csv(tmp_path / "labels.csv", index=False)
    config = {
        "name": "ddp",
        "data": {"csv": str(tmp_path / "labels.csv"), "images": str(shared_data / "nih" / "images"), "cache": True},
        "model": {"input_size": 64},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 4, "min_val_positives": 2,
                  "out_dir": str(tmp_path / "runs"), "device": "cpu"},
    }
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(tmp_path / "worker.py"), json.dumps(config), str(tmp_path)],
        capture_output=True, text=True, timeout=280, cwd=REPO_ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["checksum"] == r1["checksum"], "ranks ended with different weights"
    # Each rank saw half the training set: 32 images / 2 ranks / batch 4 = 4 steps per epoch.
    assert r0["per_rank_batches"] == 4
    # Validation predictions are gathered from both ranks, every row exactly once, equal to one-process inference.
    assert r0["rows"] == r1["rows"] == list(range(15))
    assert r0["max_gather_diff"] < 1e-5
    # Both ranks took the same early-stopping decisions from the same metrics; only rank 0 wrote files.
    strip = [[{k: v for k, v in row.items() if k != "seconds"} for row in r["history"]] for r in (r0, r1)]
    assert strip[0] == strip[1] and len(strip[0]) == 2
    metrics = (tmp_path / "runs" / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3
    assert (tmp_path / "runs" / "ddp" / "checkpoints" / "best.safetensors").is_file()
