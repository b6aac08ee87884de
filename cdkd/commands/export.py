"""Re-export a finished (or interrupted) run's student from its last checkpoint: student.pt2 and student.onnx.

    cdkd export runs/cdfkd_mfs-20250101-120000
    cdkd export RUN_DIR --out exported/ --mean-headers

The run is rebuilt from the config stored in the checkpoint (its teacher files must still be where it says:
they fix the student's shape), the engine state is loaded, and the student is exported as `cdkd distill`
exports it. The attention aggregator is not part of the checkpoint: where the run used one
(`aggregation.num_samples`), it is fitted again the same way (seeded, on the same labeled samples), unless
`--mean-headers` exports the plain mean of the headers.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..errors import CdkdError
from .base import Parser, guarded


def read_checkpoint(run_dir: str) -> tuple[str, dict[str, Any]]:
    """(where, state) of the run's checkpoint: checkpoints/last.pt, else Ray Train's newest complete one."""
    from ..checkpoint import load_run_checkpoint
    if not os.path.isdir(run_dir):
        raise CdkdError(f"run directory not found: {run_dir}")
    path = os.path.join(run_dir, "checkpoints", "last.pt")
    if os.path.exists(path):
        return path, load_run_checkpoint(path)
    from ..distributed.train import CKPT_FILE, newest_complete
    found = newest_complete(run_dir)
    if found is None:
        raise CdkdError(f"{run_dir} holds no checkpoint (neither checkpoints/last.pt nor a complete checkpoint_*)")
    return os.path.join(found[0], CKPT_FILE), found[1]


def export_run(run_dir: str, out_dir: str = "", mean_headers: bool = False, data_dir: str = "") -> dict[str, Any]:
    """Rebuild the run on the CPU from its checkpoint and export its student; returns what was written."""
    from ..checkpoint import export_student
    from ..config import make_config
    from ..supervised import eval_mode
    from ..trainer import build, fit_run_aggregator
    where, state = read_checkpoint(run_dir)
    if not isinstance(state, dict) or "config" not in state or "engine" not in state:
        raise CdkdError(f"{where}: not a cdkd run checkpoint (no config or engine state)")
    cfg = make_config(state["config"], [f"--data.root={data_dir!r}"] if data_dir else [])
    aggregate = cfg.aggregation.num_samples > 0 and not mean_headers
    run = build(cfg, with_data=aggregate, device=torch.device("cpu"))
    run.distiller.load_state(state["engine"])
    student, aggregator = run.distiller.student, None
    if aggregate:
        aggregator, _ = fit_run_aggregator(run)
    out_dir = out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    with eval_mode(student):
        written = export_student(student, aggregator, run.input_shape, os.path.join(out_dir, "student.pt2"))
    if written["onnx"] is None:
        raise CdkdError(f"{written['pt2']} written, but not the ONNX file: {written['onnx_error']}")
    return {"checkpoint": where, "iteration": run.distiller.step, "aggregation": "attention" if aggregator else "mean",
            "exported_student": written["pt2"], "exported_onnx": written["onnx"],
            "onnx_exporter": written["onnx_exporter"]}


def parser(prog: str = "cdkd export") -> Parser:
    p = Parser(prog, __doc__)
    p.add_argument("run_dir", help="the run directory (holds checkpoints/last.pt)")
    p.add_argument("--out", default="", help="directory for student.pt2 and student.onnx (default: RUN_DIR)")
    p.add_argument("--mean-headers", action="store_true", help="export the mean of the headers, fit no aggregator")
    p.add_argument("--data-dir", default="", help="data for the aggregator (default: the run's data.root)")
    return p


def main(argv: list[str] | None = None, prog: str = "cdkd export") -> int:
    args = parser(prog).parse_args(argv)

    def work() -> int:
        out = export_run(args.run_dir, args.out, args.mean_headers, args.data_dir)
        print(f"exported the student of {out['checkpoint']} (iteration {out['iteration']}, {out['aggregation']} "
              f"of headers)\n  {out['exported_student']}\n  {out['exported_onnx']}")
        print(json.dumps(out))
        return 0
    return guarded(work)
