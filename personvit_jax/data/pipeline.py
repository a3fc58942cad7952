"""Grain input pipelines: P x K identity-sampled training batches and ordered eval batches.

Training: element s of the dataset IS the batch of train step s. The global batch of step s is
drawn by `PKSampler` from (seed, s) alone; each process loads only its contiguous slice of it
(`process_slice`), and each image is augmented with a generator seeded by (seed, s, position in
the global batch). So batches do not depend on the number of processes or workers, and the
Grain iterator state (saved with every checkpoint) is just a position: resume is exact.

Data sources (personvit_jax/datasets.py): every dataset, the built-in synthetic one included,
is read from its TFDS build (`tfds.data_source`, see data/builders.py). A `layouts.Split` gives
pids, camera ids and `image(i)`, so the loaders below do not care where the bytes come from;
each process reads only the records of its own slice of every global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import grain
import numpy as np

from personvit_jax.data import augment, layouts
from personvit_jax.data.layouts import Split
from personvit_jax.data.masking import image_mask


def num_cameras(name: str, splits: dict[str, Split], sie: bool) -> int:
    """Camera count for the SIE embedding: the dataset's published one, else the data's; 0 for
    data without camera ids (an error when SIE is asked for)."""
    if not all(s.has_camera_ids for s in splits.values()):
        if sie:
            raise ValueError(f"config.model.sie=True needs camera ids, but dataset {name!r} has "
                             "none (each image got its own camera id): set "
                             "--config.model.sie=False, or prepare it with a CSV of camera ids")
        return 0
    if name in layouts.DATASETS:
        return layouts.num_cameras(name)
    return int(max(s.camids.max() for s in splits.values())) + 1


def concat_unlabeled(splits: Sequence[Split], what: str) -> Split:
    """Splits laid end to end as one unlabeled split (pids and cameras -1), read from their
    records; every split must be a TFDS build (`what` names the setting in the error)."""
    from personvit_jax.data import builders

    if any(s.records is None for s in splits):
        raise ValueError(f"{what}: only TFDS builds can be combined (data.name=folder reads "
                         "files; build the folder with data.prepare --dataset=unlabeled_folder)")
    return builders.unlabeled_split(builders.ConcatRecords([s.records for s in splits]))


class PKSampler:
    """Deterministic P x K sampling: P distinct ids, K images each (with replacement only for
    ids that have fewer than K images). Batch layout: [id_0 x K, id_1 x K, ...].

    With `camids` (Cluster Contrast's RandomMultipleGallerySampler, for pseudo identities):
    one anchor image per id, then K - 1 of the id's images from OTHER cameras than the
    anchor's (from its other images when it has none there; with replacement when too few)."""

    def __init__(self, pids: np.ndarray, num_ids_per_batch: int, num_instances: int, seed: int,
                 camids: Optional[np.ndarray] = None):
        self.ids, inverse = np.unique(np.asarray(pids), return_inverse=True)
        if num_ids_per_batch > len(self.ids):
            raise ValueError(f"P x K sampling needs P={num_ids_per_batch} distinct ids per batch "
                             f"but the training split has only {len(self.ids)} ids")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(self.ids)))[:-1]
        self.index_by_id = np.split(order, bounds)  # record indices of each id, ascending
        self.p, self.k, self.seed = num_ids_per_batch, num_instances, seed
        self.camids = None if camids is None else np.asarray(camids)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def batch(self, step: int) -> np.ndarray:
        """Record indices [P * K] of the global batch of train step `step`."""
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.choice(len(self.ids), self.p, replace=False)
        if self.camids is not None:
            return np.concatenate([self._cross_camera(self.index_by_id[i], rng) for i in chosen])
        return np.concatenate([
            rng.choice(self.index_by_id[i], self.k, replace=len(self.index_by_id[i]) < self.k)
            for i in chosen])

    def _cross_camera(self, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        anchor = rng.choice(index)
        pool = index[self.camids[index] != self.camids[anchor]]
        if not len(pool):
            pool = index[index != anchor] if len(index) > 1 else index
        rest = rng.choice(pool, self.k - 1, replace=len(pool) < self.k - 1)
        return np.concatenate([[anchor], rest])


def process_slice(global_size: int, process_index: int, process_count: int) -> slice:
    if global_size % process_count:
        raise ValueError(f"global batch {global_size} is not divisible by the {process_count} "
                         "processes")
    n = global_size // process_count
    return slice(process_index * n, (process_index + 1) * n)


class TrainBatchLoader:
    """Step index -> this process's part of that step's augmented batch (picklable for workers).

    Output: images float32 [b, H, W, 3], labels int32 [b] (train-relabelled pids), camids int32
    [b], indices int32 [b] (record indices, to name images in error reports).
    """

    def __init__(self, split: Split, sampler: PKSampler, aug_cfg, seed: int, local: slice):
        self.split, self.sampler, self.aug_cfg, self.seed, self.local = (
            split, sampler, aug_cfg, seed, local)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        idx = self.sampler.batch(step)
        positions = np.arange(len(idx))[self.local]
        images = []
        for pos in positions:
            rng = np.random.default_rng([self.seed, step, pos, 1])
            img = self.split.image(idx[pos])
            images.append(augment.reid_train_transform(img, rng, self.aug_cfg))
        local_idx = idx[self.local]
        return {"images": np.stack(images), "labels": self.split.pids[local_idx].astype(np.int32),
                "camids": self.split.camids[local_idx].astype(np.int32),
                "indices": local_idx.astype(np.int32)}


def _iter(ds: grain.MapDataset, num_workers: int, prefetch: int) -> grain.IterDataset:
    # Small buffers: a batch of 64 images at 256x128 is 25 MB of float32.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, prefetch),
                                              prefetch_buffer_size=max(1, prefetch)))
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch))
    return it


def train_iterator(split: Split, data_cfg, num_steps: int, seed: int, process_index: int = 0,
                   process_count: int = 1, first_step: int = 0, cross_camera: bool = False
                   ) -> grain.IterDataset:
    """Iterable over the local parts of the batches of steps first_step..num_steps-1; its
    iterator's state goes into checkpoints (grain.checkpoint.CheckpointSave). `cross_camera`:
    K - 1 images of each id from other cameras than its anchor's (see PKSampler)."""
    sampler = PKSampler(split.pids, data_cfg.num_ids_per_batch, data_cfg.num_instances, seed,
                        camids=split.camids if cross_camera else None)
    local = process_slice(sampler.batch_size, process_index, process_count)
    ds = grain.MapDataset.range(first_step, num_steps).map(
        TrainBatchLoader(split, sampler, data_cfg, seed, local))
    return _iter(ds, data_cfg.num_workers, data_cfg.prefetch)


class EvalBatchLoader:
    """Global batch b -> this process's slice of images b*B .. (b+1)*B - 1, padded at the end of
    the split by repeating the last image (`valid` marks the real ones). `preprocessing`: the
    test transform's image_size, mean and std (`inference.Preprocessing`)."""

    def __init__(self, split: Split, preprocessing, batch_size: int, local: slice):
        self.split, self.preprocessing, self.batch_size, self.local = (split, preprocessing,
                                                                       batch_size, local)

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        pos = np.arange(b * self.batch_size, (b + 1) * self.batch_size)[self.local]
        valid = pos < len(self.split)
        pos = np.minimum(pos, len(self.split) - 1)
        images = [augment.reid_test_transform(self.split.image(i), self.preprocessing)
                  for i in pos]
        return {"images": np.stack(images), "camids": self.split.camids[pos].astype(np.int32),
                "valid": valid}


def eval_iterator(split: Split, preprocessing, batch_size: int, process_index: int = 0,
                  process_count: int = 1, num_workers: int = 0, prefetch: int = 2
                  ) -> grain.IterDataset:
    """Ordered batches over a whole split (query or gallery)."""
    local = process_slice(batch_size, process_index, process_count)
    num_batches = -(-len(split) // batch_size)
    ds = grain.MapDataset.range(num_batches).map(
        EvalBatchLoader(split, preprocessing, batch_size, local))
    return _iter(ds, num_workers, prefetch)


# ---------------------------------------------------------------------------------------------
# Pretraining: unlabeled images, multi-crop views and student masks.
# ---------------------------------------------------------------------------------------------


class PretrainBatchLoader:
    """Step -> this process's part of the step's multi-crop batch.

    `images`: a Split (labels unused) or a list of image paths. Images are visited epoch by epoch
    in a permutation drawn from (seed, epoch). Output: global [b, 2, H, W, 3], local
    [b, L, h, w, 3] uint8 (cropped, resized, flipped), their colour parameters global_color
    [b, 2, P], local_color [b, L, P] float32 (applied in the step: `color_augment.apply`), masks
    [b, 2, N] bool (student global crops; N = patches of a global crop), indices [b] int32;
    with `with_camids`, also the images' camera ids camids [b] int32 (loss.camera_centres).
    """

    def __init__(self, images: Union[Split, Sequence[str]], aug_cfg, mask_cfg, mask_grid,
                 batch_size: int, seed: int, local: slice, with_camids: bool = False):
        self.images = images if isinstance(images, Split) else Split.from_paths("train", images)
        self.with_camids = with_camids
        self.aug_cfg, self.mask_cfg = aug_cfg, mask_cfg
        self.mask_grid, self.batch_size, self.seed, self.local = (
            tuple(mask_grid), batch_size, seed, local)
        self.steps_per_epoch = len(self.images) // batch_size

    def donor(self, rng: np.random.Generator):
        """Any image of the set, drawn from `rng` (data.background_swap's other image)."""
        return self.images.image(int(rng.integers(len(self.images))))

    def batch_indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch, 2]).permutation(len(self.images))
        return perm[pos * self.batch_size:(pos + 1) * self.batch_size]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        idx = self.batch_indices(step)
        m = self.mask_cfg
        # No masked prediction before epoch mask.start_epoch (iBOT's pred_start_epoch).
        ratio = m.ratio if step // self.steps_per_epoch >= m.start_epoch else 0.0
        views, masks = [], []
        for pos in np.arange(len(idx))[self.local]:
            rng = np.random.default_rng([self.seed, step, pos, 3])
            views.append(augment.multicrop(self.images.image(idx[pos]), rng, self.aug_cfg,
                                           self.donor))
            masks.append(np.stack([  # one ratio draw per crop, as iBOT's get_pred_ratio
                image_mask(self.mask_grid, rng, ratio, m.ratio_var if ratio else 0.0,
                           m.masked_fraction, m.min_block, m.min_aspect) for _ in range(2)]))
        batch = {k: np.stack([v[k] for v in views]) for k in views[0]}
        batch = dict(batch, masks=np.stack(masks), indices=idx[self.local].astype(np.int32))
        if self.with_camids:
            batch["camids"] = np.asarray(self.images.camids)[idx[self.local]].astype(np.int32)
        return batch


def pretrain_iterator(images: Union[Split, Sequence[str]], data_cfg, mask_cfg, mask_grid,
                      batch_size: int, num_steps: int, seed: int, process_index: int = 0,
                      process_count: int = 1, with_camids: bool = False) -> grain.IterDataset:
    """`images`: a Split (e.g. from `unlabeled_images`) or a list of image paths; `with_camids`:
    each batch also holds its images' camera ids (a Split with camera ids)."""
    if len(images) < batch_size:
        raise ValueError(f"pretraining needs at least one batch of images: found {len(images)}, "
                         f"batch size {batch_size}")
    local = process_slice(batch_size, process_index, process_count)
    loader = PretrainBatchLoader(images, data_cfg, mask_cfg, mask_grid, batch_size, seed, local,
                                 with_camids)
    ds = grain.MapDataset.range(num_steps).map(loader)
    return _iter(ds, data_cfg.num_workers, data_cfg.prefetch)


# ---------------------------------------------------------------------------------------------
# Label-efficiency experiments: a seeded fraction of the train identities.
# ---------------------------------------------------------------------------------------------


class _Rows:
    """Rows `index` of a random-access source (e.g. a TFDS data source), itself random-access."""

    def __init__(self, source, index: np.ndarray):
        self.source, self.index = source, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.source[int(self.index[i])]


def select_rows(split: Split, index: np.ndarray, pids: np.ndarray) -> Split:
    """Rows `index` of `split` (records read lazily) with identities `pids` [len(index)]."""
    index = np.asarray(index)
    return Split(split.name, [split.paths[i] for i in index], np.asarray(pids, np.int32),
                 split.camids[index],
                 records=None if split.records is None else _Rows(split.records, index),
                 has_camera_ids=split.has_camera_ids)


def without_labels(split: Split) -> Split:
    """`split` with every identity -1 (label-free training reads this, never the labels)."""
    return dataclasses.replace(split, pids=np.full(len(split), -1, np.int32))


def pseudo_labelled(split: Split, labels_n: np.ndarray) -> Split:
    """The images of `split` that a clustering assigned (labels_n >= 0), with their cluster
    ids as identities (outliers, -1, left out)."""
    index = np.flatnonzero(np.asarray(labels_n) >= 0)
    return select_rows(split, index, np.asarray(labels_n)[index])


def subset_identities(split: Split, fraction: float, seed: int) -> Split:
    """The images of round(fraction x identities) identities of `split`, drawn from `seed`,
    their pids relabelled 0..C'-1 (a train split with fewer labels; 1.0 = `split` itself)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"config.data.train_id_fraction={fraction}: expected a value in (0, 1]")
    if fraction == 1.0:
        return split
    ids = np.unique(split.pids)
    keep_n = max(2, int(round(fraction * len(ids))))  # the triplet needs two identities
    kept = np.sort(np.random.default_rng([seed, 7]).choice(ids, keep_n, replace=False))
    index = np.flatnonzero(np.isin(split.pids, kept))
    return select_rows(split, index, layouts.relabel_pids(split.pids[index]))
