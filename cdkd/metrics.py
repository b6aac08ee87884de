"""Metrics as Parquet: rows are buffered and written as one part file per flush (at each checkpoint).

The same scalars also go to TensorBoard event files (`<dir>/tensorboard`) when tensorboardX is installed.
"""
from __future__ import annotations

import glob
import os

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq


class MetricsWriter:
    def __init__(self, directory: str, tensorboard: bool = False) -> None:
        self.directory = directory
        self.rows: list[dict[str, float]] = []
        os.makedirs(directory, exist_ok=True)
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(directory, "tensorboard"), flush_secs=30)
            except ImportError:
                pass

    def log(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        if self.tb is not None:
            step = int(row["iteration"])
            for key, value in row.items():
                if key != "iteration":
                    self.tb.add_scalar(key, value, step)

    def flush(self) -> None:
        if not self.rows:
            return
        keys = list(dict.fromkeys(k for row in self.rows for k in row))  # every key any row logged, in order
        table = pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in self.rows])  # absent -> null
        first, last = int(self.rows[0]["iteration"]), int(self.rows[-1]["iteration"])
        path = os.path.join(self.directory, f"part-{first:08d}-{last:08d}.parquet")
        pq.write_table(table, path + ".tmp")
        os.replace(path + ".tmp", path)
        self.rows = []
        if self.tb is not None:
            self.tb.flush()

    def drop_after(self, iteration: int) -> None:
        """On resume: remove parts written past the checkpoint (they will be written again)."""
        for path in glob.glob(os.path.join(self.directory, "part-*.parquet")):
            first, last = (int(n) for n in os.path.basename(path)[5:-8].split("-"))
            if first > iteration:
                os.remove(path)
            elif last > iteration:  # a part reaching past the checkpoint (an older one resumed): cut it there
                table = pq.read_table(path)
                table = table.filter(pa.compute.less_equal(table.column("iteration"), iteration))
                cut = os.path.join(self.directory, f"part-{first:08d}-{iteration:08d}.parquet")
                pq.write_table(table, cut + ".tmp")
                os.replace(cut + ".tmp", cut)
                os.remove(path)


def read_metrics(directory: str) -> pa.Table:
    parts = sorted(glob.glob(os.path.join(directory, "part-*.parquet")))
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
