"""Optional TensorBoard logging beside ``loss.csv``: the same scalars and the sample figures.

``Board(folder, enabled, start)`` writes TensorBoard event files to ``folder`` (``out_dir/tensorboard``) when
``enabled`` (``TrainConfig.tensorboard``; needs ``pip install 'sgm[tensorboard]'``), and does nothing
otherwise. A resumed run purges the events logged after its checkpoint's step ``start``, as it drops the
``loss.csv`` rows, so every step appears once. View with ``tensorboard --logdir RUN/tensorboard``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Board"]


class Board:
    def __init__(self, folder: str, enabled: bool, start: int = 0):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError("tensorboard logging needs the tensorboard package: "
                             "pip install 'sgm[tensorboard]'") from err
        self.writer = SummaryWriter(folder, purge_step=start + 1)  # drop events a crashed run logged after `start`

    def scalars(self, step: int, **values: float) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def image(self, step: int, png: str, tag: str = "samples") -> None:
        """The figure saved at ``png`` (an image grid or a scatter plot) as an image at ``step``."""
        if self.writer is not None:
            from PIL import Image

            with Image.open(png) as img:
                self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
