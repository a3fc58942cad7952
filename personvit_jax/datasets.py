"""What a config's data section names, as splits: every dataset read from its TFDS build under
`data_dir` (data/builders.py), the built-in synthetic set generated and built there on first use
(synthetic/build.py). Above both packages: personvit_jax.synthetic (the generator) writes the
layouts personvit_jax.data reads, and personvit_jax.data never imports the generator."""

from __future__ import annotations

from typing import Optional

from personvit_jax.data import layouts, pipeline
from personvit_jax.data.layouts import Split


def load_splits(name: str, data_dir: str, synthetic_kwargs: Optional[dict] = None
                ) -> dict[str, Split]:
    """{'train', 'query', 'gallery'} of dataset `name` (config.data.name), read from its TFDS
    build under `data_dir` (config.data.data_dir): the one data.prepare wrote there, or for
    'synthetic' the build of the set of `synthetic_kwargs` (config.data.synthetic), generated
    and built there on first use."""
    from personvit_jax.data import builders  # TFDS: only imported when a build is read

    config = None
    if name == "synthetic":
        from personvit_jax.synthetic import build  # the generator (and TFDS): only when used

        config = build.prepare(data_dir, synthetic_kwargs)
    return builders.load_record_splits(name, data_dir, config)


def unlabeled_images(data_cfg, index_cache: str) -> Split:
    """Pretraining images (labels unused) selected by data_cfg.name: 'unlabeled_folder' = its TFDS
    build under data_cfg.data_dir; 'folder' = every image under data_cfg.root, read from the files
    (listing cached in `index_cache`); a labelled dataset name = its train split. With
    data_cfg.plus_labelled set, that labelled dataset's train split (under
    data_cfg.labelled_data_dir) follows them (a pool plus the fine-tuning set's own images)."""
    if data_cfg.name == "unlabeled_folder":
        from personvit_jax.data import builders

        images = builders.load_unlabeled(data_cfg.data_dir)
    elif data_cfg.name == "folder":
        images = Split.from_paths("train", layouts.image_folder_index(data_cfg.root, index_cache))
    else:
        images = load_splits(data_cfg.name, data_cfg.data_dir,
                             data_cfg.synthetic.to_dict())["train"]
    if not data_cfg.plus_labelled:
        return images
    extra = load_splits(data_cfg.plus_labelled, data_cfg.labelled_data_dir,
                        data_cfg.synthetic.to_dict())["train"]
    return pipeline.concat_unlabeled([images, extra], "config.data.plus_labelled")


def evaluation_splits(data_cfg) -> dict[str, Split]:
    """The query / gallery of the evaluate stage's config.data: name=query_gallery reads
    <data.root>/query and <data.root>/gallery from the files (no train split, no build; labels
    from the names, <pid>/ folders or the CSV data.labels); any other name is its build."""
    if data_cfg.name != "query_gallery":
        return load_splits(data_cfg.name, data_cfg.data_dir, data_cfg.synthetic.to_dict())
    if not data_cfg.root:
        raise ValueError("config.data.root is empty: data.name=query_gallery evaluates "
                         "<root>/query/ against <root>/gallery/")
    return layouts.load_query_gallery(data_cfg.root, data_cfg.labels or None)
