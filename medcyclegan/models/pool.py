"""History of generated images for the discriminator updates (Shrivastava et al. 2017; CycleGAN).

The discriminators are trained on a mix of the newest generated images and older ones, which damps
the oscillation between generator and discriminator. The pool draws its random numbers from its own
``torch.Generator``, and :meth:`ImagePool.state_dict` holds the stored images and that generator's
state, so a resumed run continues with exactly the draws and images of an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    """Buffer of up to ``pool_size`` previously generated images.

    :meth:`query` handles each image of a batch in turn, as the reference does: while the pool is
    not full, the image is stored and returned; once full, with probability 0.5 a uniformly chosen
    stored image is returned and the new image takes its place, otherwise the new image is returned.

    Args:
        pool_size: images kept (50 in the reference); 0 turns the pool into a pass-through.
        seed: seed of the pool's own random generator.

    Raises:
        ValueError: if ``pool_size`` is not an integer >= 0.
    """

    def __init__(self, pool_size: int = 50, seed: int = 0) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
            raise ValueError(f"image pool size must be an integer >= 0; got {pool_size!r}")
        self.pool_size = pool_size
        self._images: list[torch.Tensor] = []
        # A CPU generator works for images on any device and its state is a plain byte tensor.
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(int(seed))

    def __len__(self) -> int:
        """Number of images stored."""
        return len(self._images)

    def __repr__(self) -> str:
        return f"ImagePool(pool_size={self.pool_size}, stored={len(self._images)})"

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Images for the discriminator update: per image, the new one or a swapped-out old one.

        Args:
            images: generated batch (N, C, H, W); detached and copied before being stored.

        Returns:
            A batch of the same shape, device and dtype (``images`` itself when ``pool_size`` is 0).

        Raises:
            ValueError: if the images' shape differs from the stored ones'.
        """
        if self.pool_size == 0:
            return images
        images = images.detach()
        if self._images:
            stored = self._images[0]
            if stored.shape != images.shape[1:]:
                raise ValueError(
                    f"image pool holds images of shape {tuple(stored.shape)}; "
                    f"got a batch of shape {tuple(images.shape)}"
                )
            if stored.device != images.device:
                # After a restore onto another device (e.g. a checkpoint loaded on the CPU).
                self._images = [image.to(images.device) for image in self._images]
        chosen: list[torch.Tensor] = []
        for image in images:
            if len(self._images) < self.pool_size:
                # clone: a view would keep the whole batch's storage alive.
                self._images.append(image.clone())
                chosen.append(image)
            elif float(torch.rand((), generator=self._generator)) < 0.5:
                index = int(torch.randint(self.pool_size, (), generator=self._generator))
                chosen.append(self._images[index].to(dtype=images.dtype))
                self._images[index] = image.clone()
            else:
                chosen.append(image)
        return torch.stack(chosen)

    def state_dict(self) -> dict[str, Any]:
        """Pool size, stored images as one (n, C, H, W) tensor (``(0,)`` when empty), generator state.

        Everything is an int or a tensor, so it loads with ``torch.load(weights_only=True)``.
        """
        images = torch.stack(self._images) if self._images else torch.empty(0)
        return {"pool_size": self.pool_size, "images": images, "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`; the pool continues exactly where it was saved.

        Raises:
            ValueError: if the state is malformed or was saved with another pool size.
        """
        missing = {"pool_size", "images", "generator"} - set(state)
        if missing:
            raise ValueError(f"image pool state lacks {sorted(missing)}")
        if int(state["pool_size"]) != self.pool_size:
            raise ValueError(
                f"image pool state was saved with pool_size {int(state['pool_size'])}; "
                f"this pool has pool_size {self.pool_size}"
            )
        images = state["images"]
        if not isinstance(images, torch.Tensor) or (images.numel() > 0 and images.ndim < 2):
            raise ValueError("image pool state: 'images' must be a tensor (n, C, H, W)")
        count = images.shape[0] if images.numel() > 0 else 0
        if count > self.pool_size:
            raise ValueError(f"image pool state holds {count} images, more than pool_size {self.pool_size}")
        generator_state = state["generator"]
        if not isinstance(generator_state, torch.Tensor) or generator_state.dtype != torch.uint8:
            raise ValueError("image pool state: 'generator' must be a uint8 tensor")
        try:
            self._generator.set_state(generator_state.cpu())
        except RuntimeError:
            raise ValueError("image pool state: 'generator' is not a valid random generator state") from None
        self._images = [images[i].clone() for i in range(count)]
