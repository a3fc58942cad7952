# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # PersonViT in JAX: use the published weights
#
# The PersonViT authors released their PyTorch weights: ViT-S/16 and ViT-B/16 backbones
# pretrained on LUPerson, and ReID models fine-tuned from them on the benchmarks. The links are
# in the README of the
# [hustvl/PersonViT](https://github.com/hustvl/PersonViT) GitHub repository; download a file
# there (nothing here downloads anything) and upload it to the Colab session (Files panel, or
# Google Drive) or keep it on your disk, then set `WEIGHTS` below to its path.
#
# Without a file, the notebook writes a **randomly initialised** model in exactly the released
# fine-tuned format (the same key names and array layouts) so that every step runs; its
# rankings are then meaningless, the mechanics are the same. This notebook:
#
# 1. converts the checkpoint into a folder every stage of `personvit_jax` reads
#    (`tools/convert.py`);
# 2. extracts features for a folder of person images (`tools/extract.py`);
# 3. looks up query images in it and draws the ranked gallery;
# 4. shows the model's CLS attention per head;
# 5. exports the feature extractor with `jax.export` (`tools/export.py`) and calls the
#    exported function the way a program without this package would.
#
# **Runtime**: a few minutes on a CPU runtime (1.2 min on a 2-core CPU; the stand-in is a
# ViT-S/16 at 256x128, the size of the released small models). A GPU runtime (Runtime > Change
# runtime type) needs no change: the setup cell installs the CUDA wheels. The same steps from a
# shell:
#
# ```bash
# python -m personvit_jax.tools.convert --input=market_vits.pth --output=weights/market_vits
# python -m personvit_jax.tools.extract --checkpoint=weights/market_vits --images=FOLDER \
#     --output=features.npz
# python -m personvit_jax.tools.extract --checkpoint=weights/market_vits --gallery=features.npz \
#     --query=person.jpg --top=8
# python -m personvit_jax.tools.export --checkpoint=weights/market_vits --output=market_vits.jax
# ```

# %% [markdown]
# ## Setup
#
# On Colab this cell fetches the code and installs its requirements (a few minutes, once per
# session). Set `REPO_URL` to the repository you use (your fork or the project's), or upload
# the repository folder to `/content/personvit_jax` (then nothing is cloned). Locally
# (`pip install -r requirements.txt matplotlib jupyterlab`, then open `colabs/*.ipynb`) the cell
# only puts the checkout on `sys.path`.

# %%
import os
import shutil
import subprocess
import sys

REPO_URL = "https://github.com/YOUR_ACCOUNT/personvit_jax.git"  # <-- EDIT: your copy of the repo
REPO_DIR = "/content/personvit_jax"  # Colab: where the repository is cloned (or uploaded)

if "google.colab" in sys.modules:
    if not os.path.isdir(REPO_DIR):
        subprocess.run(["git", "clone", "--depth=1", REPO_URL, REPO_DIR], check=True)
    reqs = "requirements-cuda12.txt" if shutil.which("nvidia-smi") else "requirements.txt"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                    os.path.join(REPO_DIR, reqs), "matplotlib"], check=True)
    sys.path.insert(0, REPO_DIR)
elif os.path.isdir(os.path.join("..", "personvit_jax")):  # Jupyter started on colabs/*.ipynb
    sys.path.insert(0, os.path.abspath(".."))
import personvit_jax  # (CI: the repository root is on PYTHONPATH)

print("personvit_jax from", os.path.dirname(personvit_jax.__file__))

# %% [markdown]
# ## Parameters
#
# `SMALL = True` is the CI-sized run (a tiny stand-in model, a tiny image folder).

# %% tags=["parameters"]
SMALL = False  # True: the CI-sized run (only used without WEIGHTS)
WEIGHTS = ""  # a released checkpoint (.pth, .safetensors or .npz; none needs PyTorch)
IMAGES = ""  # a folder of person crops to search; "" = the synthetic person set's gallery
NUM_QUERIES = 3  # query images to look up
WORKDIR = "personvit_weights"  # everything this notebook writes goes under this folder

# %%
import numpy as np
from IPython.display import display
from PIL import Image

from personvit_jax import files
from personvit_jax.config_args import load_config
from personvit_jax.data.layouts import list_images
from personvit_jax.synthetic import generate_synthetic_market
from personvit_jax.evaluation import visualize
from personvit_jax.evaluation.attention import checkpoint_cls_attention
from personvit_jax.tools import convert, export, extract
from personvit_jax.inference import saved_config
from personvit_jax.tools.weights_io import read_weights
from personvit_jax.training.logging import quiet_library_logs

quiet_library_logs()
os.makedirs(WORKDIR, exist_ok=True)

# %% [markdown]
# ## 1. The checkpoint
#
# A fine-tuned PersonViT / TransReID model is a PyTorch state dict: the ViT under `base.`
# (`base.blocks.{i}.attn.qkv.weight`, ...), the BNNeck under `bottleneck.` with its running
# statistics, and the ID classifier (`classifier.weight`, 751 rows for Market-1501).

# %%
if WEIGHTS:
    weights_file = WEIGHTS
else:  # a random stand-in in the released format: ViT-S/16 at 256x128, 751 Market-1501 ids
    from safetensors.numpy import save_file

    weights_file = os.path.join(WORKDIR, "random_personvit_market_vits.safetensors")
    size = dict(width=64, depth=2, patch_size=8, image_size=(64, 32)) if SMALL else {}
    if not os.path.exists(weights_file):
        save_file(convert.random_personvit_state_dict(**size), weights_file)
state_dict = read_weights(weights_file)
print(f"{weights_file}: {len(state_dict)} arrays, e.g.")
keys = sorted(state_dict)
for key in [k for k in keys if k.startswith("base.")][:4] + [k for k in keys if "base." not in k]:
    print(f"  {key:40s} {tuple(np.shape(state_dict[key]))}")

# %% [markdown]
# ## 2. Convert
#
# The converter detects the format from the key names, infers the architecture from the shapes
# (width, depth, patch size and stride), maps every array to our Flax layout and reports what
# it leaves out (the backbone's unused `base.fc`, the BatchNorm step counter). The output
# folder holds `config.json` and an Orbax checkpoint: use it with the evaluate stage, the
# tools below, or as `--config.init_from` to fine-tune further.

# %%
CONVERTED = os.path.join(WORKDIR, "converted")
if not os.path.isdir(CONVERTED):  # the converter never writes into an existing folder
    lines = []
    options = dict(image_size=(64, 32), num_heads=2) if SMALL and not WEIGHTS else {}
    summary = convert.convert(weights_file, CONVERTED, log=lines.append, **options)
    print("\n".join(line for line in lines if not line.startswith("  mapped")))
    print(f"({len(summary['mapped'])} arrays mapped)")
model = saved_config(CONVERTED).model
print(f"model: {model.name}, width {model.width}, depth {model.depth}, heads {model.num_heads}, "
      f"patch {model.patch_size}, stride {model.patch_stride}, grid {tuple(model.pos_grid)}")

# %% [markdown]
# ## 3. Features for a folder of images
#
# Every image under the folder (recursively) is resized to the model's input size (bilinear)
# and normalised as in PersonViT's test transform; the feature is the CLS token before the
# BNNeck, L2-normalised. Without `IMAGES`, the gallery of the synthetic person set is used
# (file names start with the person id, so you can check the look-ups below by eye).

# %%
if IMAGES:
    gallery_dir, query_files = IMAGES, list_images(IMAGES)[:NUM_QUERIES]
else:
    synthetic = dict(seed=0, num_train_ids=4, num_test_ids=8 if SMALL else 100,
                     images_per_id=(4, 8), num_distractors=10 if SMALL else 100, num_junk=0)
    root = generate_synthetic_market(os.path.join(WORKDIR, "synthetic_market1501"), **synthetic)
    gallery_dir = os.path.join(root, "bounding_box_test")
    queries = list_images(os.path.join(root, "query"))
    query_files = [queries[i] for i in np.linspace(0, len(queries) - 1, NUM_QUERIES).astype(int)]

eval_config = load_config("evaluate")  # feature options: eval.flip, eval.neck_feat, ...
eval_config.checkpoint = CONVERTED
features_file = os.path.join(WORKDIR, "gallery_features.npz")
gallery_features, gallery_paths = extract.extract_folder(eval_config, gallery_dir, features_file,
                                                         overwrite=True)
print(gallery_features.shape, "features, e.g.", os.path.basename(gallery_paths[0]))

# %% [markdown]
# ## 4. Query -> ranked gallery
#
# Each row: the query, then its nearest gallery images with their distances (the tool knows no
# labels, so the frames are neutral).

# %% tags=["figure"]
pictures = []
for query_file in query_files:
    name = os.path.splitext(os.path.basename(query_file))[0]
    pictures.append(os.path.join(WORKDIR, f"{name}_top8.png"))
    extract.look_up(eval_config, query_file, gallery_features, gallery_paths, top=8,
                    draw=pictures[-1], overwrite=True)
display(visualize.stack_rows([Image.open(p) for p in pictures]))

# %% [markdown]
# ## 5. Where the CLS token looks
#
# Last-layer attention of the CLS token over the patches, per head. With the released weights
# the heads pick out body parts (head, torso, legs, bags); the random stand-in shows no
# structure.

# %% tags=["figure"]
people = [Image.open(p).convert("RGB") for p in query_files]
maps = checkpoint_cls_attention(CONVERTED, people)  # [B, heads, gh, gw]
display(visualize.attention_image(people, maps))

# %% [markdown]
# ## 6. Export the feature extractor
#
# `jax.export` serialises the whole extractor, weights included: `uint8 [B, H, W, 3]` images
# (RGB, already resized to the model's input size) -> L2-normalised `float32 [B, D]` features,
# for any batch size, lowered for CPU, CUDA and TPU. Loading it needs only `jax` (and
# `flatbuffers`), not this package.

# %%
EXPORTED = os.path.join(WORKDIR, "extractor.jax")
exported, info = export.export_extractor(CONVERTED)
files.write_bytes(EXPORTED, exported.serialize())
print(f"{EXPORTED}: {os.path.getsize(EXPORTED) / 1e6:.1f} MB, {exported.in_avals} -> "
      f"{exported.out_avals}, platforms {exported.platforms}")

# %% [markdown]
# What a program without this package does with the file: resize the crops, call the function.
# Its features match the extract tool's.

# %%
from jax import export as jax_export

extractor = jax_export.deserialize(open(EXPORTED, "rb").read())
h, w = info["image_size"]
crops = np.stack([np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR))
                  for p in gallery_paths[:8]])
features = np.asarray(extractor.call(crops))
print("features", features.shape, "max |exported - extract tool| =",
      f"{np.abs(features - gallery_features[:8]).max():.2e}")
