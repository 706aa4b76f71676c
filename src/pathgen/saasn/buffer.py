"""Replay buffer of generated images (METHODS.md §2.3: 50 images, CycleGAN's rule).

Discriminators are updated with generated images drawn from a history, not only the latest batch, which damps
oscillation between generators and discriminators. Rule per image of a new batch: while the buffer holds fewer
than ``capacity`` images, the image is stored and used; afterwards, with probability ½ a random stored image is
used and replaced by the new one, else the new image is used and the buffer is left alone.

The buffer's random draws come from its own seeded generator, and :meth:`state` / :meth:`load_state` carry both the
stored images and the generator state, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

from pathgen.errors import PathgenError


class ReplayBuffer:
    """History of generated images.

    Parameters
    ----------
    capacity : int
        Images kept (50; 0 disables the buffer: every query returns its input).
    seed : int
        Seed of the buffer's random choices.
    """

    def __init__(self, capacity: int = 50, seed: int = 0):
        if capacity < 0:
            raise PathgenError(f"buffer capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.images: list[torch.Tensor] = []
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same shape mixing ``batch`` (detached) with stored images.

        Parameters
        ----------
        batch : tensor, shape (B, C, H, W)

        Returns
        -------
        tensor, shape (B, C, H, W), detached.
        """
        batch = batch.detach()
        if self.capacity == 0:
            return batch
        out = []
        for image in batch:
            image = image.clone()
            if len(self.images) < self.capacity:
                self.images.append(image)
                out.append(image)
            elif self.rng.random() < 0.5:
                k = int(self.rng.integers(self.capacity))
                out.append(self.images[k])
                self.images[k] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, json_state)``: stored images (as one stacked tensor, absent when empty) and the RNG state."""
        tensors = {"images": torch.stack(self.images).cpu()} if self.images else {}
        return tensors, {"capacity": self.capacity, "count": len(self.images), "rng": self.rng.bit_generator.state}

    def load_state(self, tensors: dict[str, torch.Tensor], json_state: dict, device=None) -> None:
        """Restore what :meth:`state` returned."""
        count = int(json_state.get("count", 0))
        images = tensors.get("images")
        if count and (images is None or images.shape[0] != count):
            raise PathgenError("replay buffer state is inconsistent (image count differs)")
        self.capacity = int(json_state.get("capacity", self.capacity))
        self.images = [im.to(device) if device is not None else im for im in images] if count else []
        self.rng.bit_generator.state = json_state["rng"]
