"""ImagePool: fill phase, 0.5 swap statistics, determinism and exact resumption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medcyclegan.models.pool import ImagePool


def labelled(values: list[float] | range, shape: tuple[int, ...] = (1, 4, 4)) -> torch.Tensor:
    """A batch whose image i is filled with values[i], so returned images can be identified."""
    return torch.stack([torch.full(shape, float(v)) for v in values])


def labels(batch: torch.Tensor) -> list[float]:
    return [float(image.flatten()[0]) for image in batch]


def test_pool_size_zero_is_a_pass_through() -> None:
    pool = ImagePool(0)
    batch = labelled([1, 2, 3])
    assert pool.query(batch) is batch
    assert len(pool) == 0


def test_fill_phase_returns_and_stores_the_new_images() -> None:
    pool = ImagePool(5, seed=0)
    assert labels(pool.query(labelled([0, 1, 2]))) == [0, 1, 2]
    assert len(pool) == 3
    # the batch crosses the full mark: images 3 and 4 fill it, image 5 already takes part in the draw
    out = labels(pool.query(labelled([3, 4, 5])))
    assert out[:2] == [3, 4]
    assert out[2] in {0, 1, 2, 3, 4, 5}
    assert len(pool) == 5


def test_full_pool_swaps_with_probability_one_half() -> None:
    pool = ImagePool(10, seed=1)
    pool.query(labelled(range(10)))
    stored = set(range(10))
    swaps = 0
    queries = 4000
    for step in range(10, 10 + queries):
        (out,) = labels(pool.query(labelled([step])))
        if out != step:
            swaps += 1
            assert out in stored  # an old image comes back ...
            stored.remove(out)
            stored.add(step)  # ... and the new one takes its place
        assert len(pool) == 10
    # binomial(4000, 0.5): standard deviation 0.0079
    assert abs(swaps / queries - 0.5) < 0.03


def test_swapped_slots_are_uniform() -> None:
    pool = ImagePool(4, seed=2)
    pool.query(labelled(range(4)))
    hits = torch.zeros(4)
    for step in range(4, 4004):
        before = [float(image.flatten()[0]) for image in pool._images]
        (out,) = labels(pool.query(labelled([step])))
        if out != step:
            hits[before.index(out)] += 1
    share = hits / hits.sum()
    assert float((share - 0.25).abs().max()) < 0.04


def test_same_seed_same_outputs_other_seed_other_outputs() -> None:
    def run(seed: int) -> list[float]:
        pool = ImagePool(3, seed=seed)
        return [v for step in range(0, 60, 2) for v in labels(pool.query(labelled([step, step + 1])))]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_state_round_trip_resumes_exactly(tmp_path: Path) -> None:
    pool = ImagePool(6, seed=3)
    for step in range(0, 20, 2):
        pool.query(labelled([step, step + 1]))
    path = tmp_path / "pool.pt"
    torch.save(pool.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert state["images"].shape == (6, 1, 4, 4)
    restored = ImagePool(6, seed=999)  # a different seed: the state must override it
    restored.load_state_dict(state)
    for step in range(100, 160, 3):
        batch = labelled([step, step + 1, step + 2])
        torch.testing.assert_close(restored.query(batch), pool.query(batch), rtol=0, atol=0)
    assert [labels(i[None]) for i in restored._images] == [labels(i[None]) for i in pool._images]


def test_state_round_trip_of_a_partly_filled_and_an_empty_pool(tmp_path: Path) -> None:
    for filled in (0, 2):
        pool = ImagePool(4, seed=0)
        if filled:
            pool.query(labelled(range(filled)))
        torch.save(pool.state_dict(), tmp_path / "pool.pt")
        restored = ImagePool(4, seed=5)
        restored.load_state_dict(torch.load(tmp_path / "pool.pt", weights_only=True))
        assert len(restored) == filled
        for step in range(10, 30):
            assert labels(restored.query(labelled([step]))) == labels(pool.query(labelled([step])))


def test_load_state_rejects_mismatches() -> None:
    state = ImagePool(4).state_dict()
    with pytest.raises(ValueError, match="pool_size 4"):
        ImagePool(5).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        ImagePool(4).load_state_dict({"pool_size": 4})
    with pytest.raises(ValueError, match="generator"):
        ImagePool(4).load_state_dict({**state, "generator": torch.zeros(3)})
    with pytest.raises(ValueError, match="more than pool_size"):
        ImagePool(4).load_state_dict({**state, "images": torch.zeros(5, 1, 2, 2)})


def test_images_are_stored_detached_copies_on_their_device() -> None:
    pool = ImagePool(2)
    batch = torch.zeros(2, 1, 4, 4, requires_grad=True)
    out = pool.query(batch * 1.0)
    assert not out.requires_grad
    assert all(not image.requires_grad and image.device == batch.device for image in pool._images)
    source = torch.zeros(2, 1, 4, 4)
    pool = ImagePool(2)
    pool.query(source)
    source += 7.0  # later in-place changes of the caller's batch do not reach the pool
    assert all(float(image.abs().max()) == 0.0 for image in pool._images)


def test_batch_shape_and_validation() -> None:
    pool = ImagePool(3)
    assert pool.query(torch.zeros(4, 3, 8, 8)).shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        pool.query(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="pool size"):
        ImagePool(-1)
