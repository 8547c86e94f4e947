"""What a run writes as it goes: metrics.jsonl, TensorBoard scalars and images, and a progress bar.

    tensorboard --logdir runs/tok      # curves (and preview grids) while the run goes on
"""
from __future__ import annotations

import json
import os
import time


class MetricsLogger:
    """JSONL, TensorBoard (OUTPUT/tb) and textok.progress (a bar on a terminal, else
    log lines with rate and ETA), all on rank 0 only."""

    def __init__(self, output_dir: str, total_steps: int, start_step: int = 0, is_main: bool = True,
                 desc: str = "train"):
        self.is_main = is_main
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = self.bar = None
        self.last: dict[str, float] = {}  # the latest logged values (for the model card)
        if not is_main:
            return
        os.makedirs(output_dir, exist_ok=True)
        if start_step == 0 and os.path.exists(self.path):
            os.remove(self.path)  # a fresh run; a resumed one appends
        elif start_step > 0:
            self._truncate_after(start_step)
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is a core dependency

        self.tb = SummaryWriter(os.path.join(output_dir, "tb"))
        from textok.progress import Progress

        self.bar = Progress(desc, total=total_steps, unit="steps", initial=start_step, output=output_dir)
        self.t0 = time.time()

    def _truncate_after(self, step: int) -> None:
        # Steps logged after the checkpoint we resume from will be logged again.
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [line for line in f if json.loads(line).get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.is_main:
            return
        row = {"step": step, "time": round(time.time() - self.t0, 3), **{k: float(v) for k, v in values.items()}}
        self.last = {k: v for k, v in row.items() if k not in ("step", "time")}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), step)
        if self.bar is not None:
            self.bar.set_postfix(**{k: float(v) for k, v in list(values.items())[:4]})

    def plot(self, png_path: str) -> str | None:
        """Redraw the loss curves from metrics.jsonl (called at every preview, so loss.png is
        current while the run goes on, not only at its end)."""
        if not self.is_main:
            return None
        from textok.trainer.evaluation.grid import plot_metrics

        return plot_metrics(self.path, png_path)

    def image(self, tag: str, png_path: str, step: int) -> None:
        """Show a preview grid (a PNG the trainer just wrote) in TensorBoard's Images tab."""
        if self.tb is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(png_path) as im:
            self.tb.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.tb.flush()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
