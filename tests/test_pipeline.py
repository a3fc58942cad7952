"""P x K sampler invariants, augmentation, and the Grain train/eval pipelines."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from personvit_jax.data import augment, pipeline


def test_pk_sampler_invariants():
    # ids 10 (1 image), 11 (3 images), 12..15 (6 images each)
    pids = np.array([10] + [11] * 3 + sum([[i] * 6 for i in range(12, 16)], []))
    s = pipeline.PKSampler(pids, num_ids_per_batch=4, num_instances=4, seed=3)
    for step in range(50):
        idx = s.batch(step)
        assert idx.shape == (16,)
        groups = pids[idx].reshape(4, 4)
        assert (groups == groups[:, :1]).all(), "K consecutive images of one id"
        assert len(set(groups[:, 0])) == 4, "P distinct ids"
        for g, row in zip(groups[:, 0], idx.reshape(4, 4)):
            if (pids == g).sum() >= 4:
                assert len(set(row)) == 4, "no repeats when the id has >= K images"
    np.testing.assert_array_equal(s.batch(7), pipeline.PKSampler(pids, 4, 4, 3).batch(7))
    assert not np.array_equal(s.batch(7), s.batch(8))
    assert not np.array_equal(s.batch(7), pipeline.PKSampler(pids, 4, 4, 4).batch(7))
    with pytest.raises(ValueError, match="only 6 ids"):
        pipeline.PKSampler(pids, 7, 4, 0)


def _aug_cfg(**kw):
    c = dict(image_size=(64, 32), flip_prob=0.5, pad=4, erasing_prob=0.5, mean=(0.5,) * 3,
             std=(0.5,) * 3, num_ids_per_batch=4, num_instances=4, num_workers=0, prefetch=1)
    c.update(kw)
    return ml_collections.ConfigDict(c)


def test_train_transform_flip_and_erasing(tiny_splits):
    split = tiny_splits["train"]
    img = split.image(0)
    plain = _aug_cfg(flip_prob=0.0, pad=0, erasing_prob=0.0)
    x = augment.reid_train_transform(img, np.random.default_rng(0), plain)
    # bicubic (train) vs bilinear (test) resize: close on average, not pixel-exact
    assert np.abs(x - augment.reid_test_transform(img, plain)).mean() < 0.03
    assert x.shape == (64, 32, 3) and x.dtype == np.float32 and -1 <= x.min() <= x.max() <= 1
    flipped = augment.reid_train_transform(img, np.random.default_rng(0), _aug_cfg(
        flip_prob=1.0, pad=0, erasing_prob=0.0))
    np.testing.assert_allclose(flipped, x[:, ::-1])
    erased = augment.random_erasing(np.zeros((64, 32, 3), np.float32), np.random.default_rng(1), 1.0)
    frac = (erased != 0).any(-1).mean()
    assert 0.02 * 0.9 <= frac <= 1 / 3 + 0.05


def test_train_iterator_deterministic_and_process_independent(tiny_splits):
    split = tiny_splits["train"]
    cfg = _aug_cfg()
    one = list(pipeline.train_iterator(split, cfg, num_steps=3, seed=5))
    again = list(pipeline.train_iterator(split, cfg, num_steps=3, seed=5))
    halves = [list(pipeline.train_iterator(split, cfg, 3, 5, process_index=p, process_count=2))
              for p in range(2)]
    for s in range(3):
        for k in ("images", "labels", "camids", "indices"):
            np.testing.assert_array_equal(one[s][k], again[s][k])
            np.testing.assert_array_equal(one[s][k],
                                          np.concatenate([halves[0][s][k], halves[1][s][k]]))
    assert one[0]["images"].shape == (16, 64, 32, 3)
    assert one[0]["labels"].max() < split.num_ids
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.train_iterator(split, cfg, 3, 5, process_index=0, process_count=3)


def test_train_iterator_state_resumes_exactly(tiny_splits):
    split = tiny_splits["train"]
    ds = pipeline.train_iterator(split, _aug_cfg(), num_steps=5, seed=1)
    it = iter(ds)
    next(it), next(it)
    state = it.get_state()
    expected = next(it)
    it2 = iter(ds)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["images"], expected["images"])


def test_eval_iterator_order_and_padding(tiny_splits):
    q = tiny_splits["query"]
    batches = list(pipeline.eval_iterator(q, _aug_cfg(), batch_size=8))
    assert len(batches) == -(-len(q) // 8)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == len(q) and valid[: len(q)].all()
    cams = np.concatenate([b["camids"] for b in batches])[: len(q)]
    np.testing.assert_array_equal(cams, q.camids)
    first = augment.reid_test_transform(q.image(0), _aug_cfg())
    np.testing.assert_array_equal(batches[0]["images"][0], first)


def test_color_jitter():
    x = (np.random.default_rng(0).random((16, 8, 3)) * 255).astype(np.uint8)
    jitter = lambda seed, *f: np.asarray(augment.color_jitter(
        Image.fromarray(x), np.random.default_rng(seed), *f))
    np.testing.assert_array_equal(jitter(1, 0, 0, 0, 0), x)
    # brightness only: one factor in [0.5, 1.5] for every pixel (up to rounding and clipping)
    y = jitter(2, 0.5, 0, 0, 0).astype(float)
    mask = (x > 20) & (y < 250)
    ratios = y[mask] / x[mask]
    assert 0.5 - 0.06 <= ratios.min() and ratios.max() <= 1.5 + 0.06
    assert ratios.max() - ratios.min() < 0.1
    # contrast only: pixels move towards / away from the image's mean grey by one factor
    grey = np.asarray(Image.fromarray(x).convert("L"), float).mean()
    c = jitter(4, 0, 0.5, 0, 0).astype(float)
    inner = (np.abs(x - grey) > 30) & (c > 5) & (c < 250)
    f = (c[inner] - grey) / (x[inner] - grey)
    assert 0.5 - 0.05 <= f.min() and f.max() <= 1.5 + 0.05 and f.max() - f.min() < 0.1
    # saturation 1 (factor in [0, 2]) and hue change colours but keep the shape and dtype
    z = jitter(3, 0, 0, 1.0, 0.5)
    assert z.shape == x.shape and z.dtype == np.uint8 and not np.array_equal(z, x)


def test_subset_identities(tiny_splits):
    """A seeded fraction of the identities with all their images, pids relabelled 0..C'-1;
    images read through the subset are those of the kept records."""
    train = tiny_splits["train"]
    half = pipeline.subset_identities(train, 0.5, seed=0)
    assert half.num_ids == round(0.5 * train.num_ids)
    assert sorted(set(half.pids.tolist())) == list(range(half.num_ids))
    kept = [i for i, p in enumerate(train.paths) if p in set(half.paths)]
    assert len(kept) == len(half) and np.array_equal(half.camids, train.camids[kept])
    first = kept[0]
    assert np.array_equal(np.asarray(half.image(0)), np.asarray(train.image(first)))
    again = pipeline.subset_identities(train, 0.5, seed=0)
    other = pipeline.subset_identities(train, 0.5, seed=1)
    assert list(again.paths) == list(half.paths) and list(other.paths) != list(half.paths)
    assert pipeline.subset_identities(train, 1.0, seed=0) is train
    with pytest.raises(ValueError, match="train_id_fraction=0.0"):
        pipeline.subset_identities(train, 0.0, seed=0)


def test_resized_crop_box_falls_back_to_torchvisions_centre_crop():
    """When no box fits in 10 attempts, torchvision's RandomResizedCrop takes the centre crop
    clamped to the ratio range (64x85 of a 64x128 person at ratio >= 3/4), never the whole
    image; fitting boxes keep the drawn area and aspect ratio."""
    from personvit_jax.data.augment import resized_crop_box

    rng = np.random.default_rng(0)
    # scale 1 with w/h >= 3/4 cannot fit a 1:2 image: always the fallback
    assert resized_crop_box(64, 128, rng, (1.0, 1.0)) == (0, 21, 64, 106)
    assert resized_crop_box(128, 64, rng, (1.0, 1.0)) == (21, 0, 106, 64)  # too wide: clamp w
    assert resized_crop_box(60, 60, rng, (1.0, 1.0), attempts=0) == (0, 0, 60, 60)
    boxes = np.array([resized_crop_box(64, 128, rng, (0.4, 1.0)) for _ in range(2000)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 128).all()
    assert not ((w == 64) & (h == 128)).any()  # no whole-image view
    assert ((w / h > 0.7) & (w / h < 1.4)).all()  # 3/4 - 4/3, up to rounding to pixels
    assert ((w * h >= 0.39 * 64 * 128) & (w * h <= 64 * 128)).all()


def test_crop_ratio_switch_draws_person_aspect_boxes():
    """data.crop_ratio=(3/8, 2/3) (a 1:2 person's own aspect): boxes keep it, whole images
    become possible; without the key the views are DINO's 3/4-4/3 boxes."""
    import ml_collections
    from PIL import Image

    from personvit_jax.data import augment

    img = Image.fromarray(np.arange(128 * 64 * 3, dtype=np.uint32).reshape(128, 64, 3)
                          .astype(np.uint8))
    seen = {}
    for ratio in (None, (3 / 8, 2 / 3)):
        cfg = ml_collections.ConfigDict({"color_jitter": {"prob": 0.0}, "grayscale_prob": 0.0})
        if ratio:
            cfg.crop_ratio = ratio
        boxes = []
        real = augment.resized_crop_box

        def spy(*a, **kw):
            boxes.append(real(*a, **kw))
            return boxes[-1]

        augment.resized_crop_box = spy
        try:
            rng = np.random.default_rng(0)
            for _ in range(500):
                augment.multicrop_view(img, rng, (128, 64), (0.4, 1.0), 0.0, 0.0, cfg)
        finally:
            augment.resized_crop_box = real
        b = np.array(boxes)
        seen[ratio] = (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1])
    assert ((seen[None] > 0.7) & (seen[None] < 1.4)).all()
    person = seen[(3 / 8, 2 / 3)]
    assert ((person > 0.35) & (person < 0.7)).all() and person.std() > 0.05


def test_background_swap_is_off_by_default_and_replaces_only_the_margins():
    """data.background_swap (not DINO's): prob 0 leaves every view and every later draw as
    without the key; prob 1 takes each view's side margins from a donor image it draws, the
    centre stays the image's own; a resumed draw repeats the same view."""
    import ml_collections
    from PIL import Image

    from personvit_jax.data import augment

    img = Image.fromarray(np.full((128, 64, 3), 200, np.uint8))
    donors = [Image.fromarray(np.full((64, 32, 3), 10 * k, np.uint8)) for k in range(5)]
    picked = []

    def donor(rng):
        picked.append(int(rng.integers(len(donors))))
        return donors[picked[-1]]

    base = {"color_jitter": {"prob": 0.0}, "grayscale_prob": 0.0, "crop_ratio": (0.5, 0.5)}

    def views(swap, seed=0, n=20):
        cfg = ml_collections.ConfigDict(dict(base, **({"background_swap": swap} if swap
                                                      else {})))
        rng = np.random.default_rng(seed)
        out = [augment.multicrop_view(img, rng, (128, 64), (1.0, 1.0), 0.0, 0.0, cfg, donor)[0]
               for _ in range(n)]
        return np.stack(out), rng.random()

    plain, next_plain = views(None)
    off, next_off = views({"prob": 0.0, "margin": 0.25})
    np.testing.assert_array_equal(plain, off)
    assert next_plain == next_off and not picked  # no donor, no extra draws when off
    on, _ = views({"prob": 1.0, "margin": 0.25})
    assert len(picked) == 20 and len(set(picked)) > 1
    # whole-image boxes (scale 1, the image's own aspect): columns 0-15 and 48-63 are the
    # donor's, 16-47 the image's; one column either side of each seam is interpolated
    np.testing.assert_array_equal(on[:, :, 18:46], 200)
    for v, k in zip(on, picked):
        assert np.all(v[:, :14] == 10 * k) and np.all(v[:, 50:] == 10 * k), k
    again, _ = views({"prob": 1.0, "margin": 0.25})
    np.testing.assert_array_equal(again, on)
    with pytest.raises(ValueError, match="background_swap is on but"):
        augment.multicrop_view(img, np.random.default_rng(0), (128, 64), (1.0, 1.0), 0.0, 0.0,
                               ml_collections.ConfigDict(dict(base, background_swap={
                                   "prob": 1.0, "margin": 0.25})))


def test_sensor_jitter_is_off_by_default_and_changes_sharpness_and_noise_when_on():
    """data.sensor_jitter (not DINO's): prob 0 leaves every view and every later draw as
    without the key; prob 1 makes each view its own camera: softer (down and back up) and
    noisier, reproducibly from the seed."""
    import ml_collections
    from PIL import Image

    from personvit_jax.data import augment

    stripes = np.zeros((128, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes: all energy at the highest frequency
    img = Image.fromarray(stripes)
    base = {"color_jitter": {"prob": 0.0}, "grayscale_prob": 0.0}

    def views(sensor, seed=0, n=40):
        cfg = ml_collections.ConfigDict(dict(base, **({"sensor_jitter": sensor} if sensor
                                                      else {})))
        rng = np.random.default_rng(seed)
        out = [augment.multicrop_view(img, rng, (128, 64), (0.9, 1.0), 0.0, 0.0, cfg)[0]
               for _ in range(n)]
        return np.stack(out).astype(np.float32), rng.random()

    plain, next_plain = views(None)
    off, next_off = views({"prob": 0.0, "min_resolution": 0.5, "max_noise": 8.0})
    np.testing.assert_array_equal(plain, off)
    assert next_plain == next_off  # no extra draws when off
    soft, _ = views({"prob": 1.0, "min_resolution": 0.5, "max_noise": 0.0})
    contrast = lambda v: np.abs(np.diff(v, axis=2)).mean()  # neighbouring-column steps
    assert contrast(soft) < 0.8 * contrast(plain)
    flat = Image.fromarray(np.full((128, 64, 3), 128, np.uint8))
    cfg = ml_collections.ConfigDict(dict(base, sensor_jitter={
        "prob": 1.0, "min_resolution": 1.0, "max_noise": 8.0}))
    noisy = [augment.multicrop_view(flat, np.random.default_rng(s), (128, 64), (0.9, 1.0), 0.0,
                                    0.0, cfg)[0].astype(np.float32) for s in range(20)]
    sds = np.array([v.std() for v in noisy])
    assert sds.max() > 2.0 and (sds < 8.5).all() and len(set(sds.round(3))) > 10
    again = augment.multicrop_view(flat, np.random.default_rng(3), (128, 64), (0.9, 1.0), 0.0,
                                   0.0, cfg)[0]
    np.testing.assert_array_equal(again, noisy[3])
