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
# # PersonViT in JAX: your own data
#
# From a folder of your own identities to a fine-tuned, evaluated ReID model. The folder
# layout (`--dataset=reid_folder`):
#
# ```
# my_people/train/<pid>/<image>      training identities (pid: an integer folder name)
# my_people/query/<pid>/<image>      evaluation: queries ...
# my_people/gallery/<pid>/<image>    ... searched in the gallery
#   (or my_people/test/<pid>/<image>: every test image is a query against all the others)
# ```
#
# **Camera ids** are optional. Without them every image counts as its own camera, so the
# evaluation only leaves out the query image itself. With them (a CSV of `path,pid,camid` rows,
# paths relative to the folder), evaluation follows the Market-1501 protocol: gallery images of
# the query's person *from the query's camera* are ignored, which is the harder, standard
# test. This notebook:
#
# 1. makes such a folder from the synthetic person set (or uses yours: set `MY_DATA`), with a
#    camera CSV next to it;
# 2. builds it into a TFDS dataset twice, without and with the camera ids
#    (`python -m personvit_jax.data.prepare --dataset=reid_folder`);
# 3. fine-tunes on it (`configs/finetune.py`, CPU-sized);
# 4. evaluates with the evaluate stage (`configs/evaluate.py`) on both builds, with rank lists.
#
# **Runtime**: about 5-10 minutes on a CPU runtime (5.2 min on a 2-core CPU). On a GPU runtime
# (Runtime > Change runtime type) the setup cell installs the CUDA wheels; then fine-tune the
# full recipe instead:
# `load_config("finetune", "dataset=reid_folder,model=vit_small")` (256x128 ViT-S/16, 120
# epochs) from the released LUPerson-pretrained backbone converted with `tools/convert.py`
# (notebook `pretrained_weights`) as `init_from`. The same steps from a shell:
#
# ```bash
# python -m personvit_jax.data.prepare --dataset=reid_folder --source=my_people \
#     [--csv=my_people_cameras.csv] --data_dir=data
# python -m personvit_jax.main --config=configs/finetune.py:dataset=reid_folder,model=vit_small \
#     --workdir=runs/my_people --config.data.data_dir=data [--config.init_from=weights/pt_vits]
# python -m personvit_jax.main --config=configs/evaluate.py:dataset=reid_folder \
#     --config.checkpoint=runs/my_people --workdir=runs/my_people_eval --config.data.data_dir=data
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
# `SMALL = True` is the CI-sized run (tiny ViT, tiny folder, a minute; numbers mean nothing).

# %% tags=["parameters"]
SMALL = False  # True: the CI-sized run (overrides the sizes below)
MY_DATA = ""  # your folder (layout above); "" = one made from the synthetic person set
LABELS_CSV = ""  # optional path,pid,camid CSV for MY_DATA ("" = no camera ids)
EPOCHS = 15  # fine-tuning epochs (CPU runtime)
WORKDIR = "personvit_custom"  # everything this notebook writes goes under this folder

# %%
import csv
import json
import tempfile

import matplotlib.pyplot as plt
from IPython.display import display
from PIL import Image

from personvit_jax.config_args import load_config
from personvit_jax import datasets
from personvit_jax.data import prepare
from personvit_jax.evaluation import visualize
from personvit_jax.stages import evaluate, finetune
from personvit_jax.training.logging import plot_metrics, quiet_library_logs

quiet_library_logs()
os.makedirs(WORKDIR, exist_ok=True)
SYNTHETIC = dict(load_config("finetune", "synthetic").data.synthetic)  # 450 + 150 identities
if SMALL:
    SYNTHETIC.update(num_train_ids=24, num_test_ids=12, images_per_id=(6, 8),
                     num_distractors=20, num_junk=5)
    EPOCHS = 4

# %% [markdown]
# ## 1. A folder of identities
#
# Made here from the synthetic person set, read from its TFDS records as any dataset (it is
# generated and built on first use): each record holds the JPEG bytes, the original person id
# and the camera. Yours would come from your own footage. The camera ids go into a separate CSV.

# %%
if not MY_DATA:
    synthetic = datasets.load_splits("synthetic", os.path.join(WORKDIR, "data"), SYNTHETIC)
    MY_DATA = os.path.join(WORKDIR, "my_people")
    LABELS_CSV = os.path.join(WORKDIR, "my_people_cameras.csv")
    if not os.path.isdir(MY_DATA):  # written to a temporary folder, renamed when complete
        tmp = tempfile.mkdtemp(dir=WORKDIR)
        rows = [("path", "pid", "camid")]
        for split in ("train", "query", "gallery"):
            records = synthetic[split].records
            for i in range(len(records)):
                record = records[i]
                pid, camid = int(record["pid"]), int(record["camid"])
                relative = os.path.join(split, f"{pid:04d}", os.path.basename(
                    synthetic[split].paths[i]))
                os.makedirs(os.path.dirname(os.path.join(tmp, relative)), exist_ok=True)
                with open(os.path.join(tmp, relative), "wb") as f:
                    f.write(record["image"])
                rows.append((relative, pid, camid))
        with open(LABELS_CSV, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        os.rename(tmp, MY_DATA)
for split in sorted(os.listdir(MY_DATA)):
    ids = os.listdir(os.path.join(MY_DATA, split))
    count = sum(len(os.listdir(os.path.join(MY_DATA, split, i))) for i in ids)
    print(f"{MY_DATA}/{split}/: {len(ids)} identity folders, {count} images")
if LABELS_CSV:
    print(open(LABELS_CSV).read().splitlines()[:3])

# %% tags=["figure"]
# A few training identities, one folder per row.
train_dir = os.path.join(MY_DATA, "train")
shown_ids, per_row = sorted(os.listdir(train_dir))[:4], 6
fig, axes = plt.subplots(len(shown_ids), per_row, figsize=(per_row * 1.3, len(shown_ids) * 2.5))
for row, pid in zip(axes, shown_ids):
    names = sorted(os.listdir(os.path.join(train_dir, pid)))
    for ax in row:
        ax.axis("off")
    for ax, name in zip(row, names):
        ax.imshow(Image.open(os.path.join(train_dir, pid, name)))
        ax.set_title(f"train/{pid}/", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Build the TFDS dataset
#
# `prepare` checks the layout (integer identity folders, images only, no empty split, every
# image decodable), writes the images' original bytes into ArrayRecord files under
# `DATA_DIR/reid_folder/1.0.0/` and prints what it holds. One build per `data_dir`; here two:
# without and with the camera CSV. (`overwrite=True` rebuilds this notebook's own builds when
# the cell runs again.)

# %%
builds = {"no camera ids": os.path.join(WORKDIR, "data_no_cameras")}
if LABELS_CSV:
    builds["camera ids"] = os.path.join(WORKDIR, "data_cameras")
for label, data_dir in builds.items():
    print(f"== {label}")
    prepare.prepare("reid_folder", MY_DATA, data_dir, overwrite=True,
                    csv_path=LABELS_CSV if label == "camera ids" else None)

# %% [markdown]
# ## 3. Fine-tune
#
# `configs/finetune.py:synthetic` is the CPU-sized recipe (a 6-block ViT-Tiny at 128x64,
# P x K = 8 x 4, AdamW); only the dataset changes. Camera ids do not matter for training
# (unless `--config.model.sie=True`, which needs them), so the run uses the build with them
# when there is one.

# %%
FT_DIR = os.path.join(WORKDIR, "finetune")
ft_config = load_config("finetune", "synthetic")
ft_config.data.name = "reid_folder"
ft_config.data.data_dir = builds.get("camera ids", builds["no camera ids"])
ft_config.optim.epochs = EPOCHS
ft_config.optim.warmup_epochs = 1 if SMALL else 3
ft_config.eval.every_epochs = max(1, EPOCHS // 5)
if SMALL:  # a 2-block, 64-wide ViT on 64x32 inputs
    m = ft_config.model
    m.width, m.depth, m.num_heads, m.patch_size, m.patch_stride = 64, 2, 2, 8, 8
    m.pos_grid = (8, 4)
    ft_config.data.image_size, ft_config.data.pad = (64, 32), 4
    ft_config.log_every_steps = 2
print(json.dumps(finetune.train(ft_config, FT_DIR), indent=1))

# %% tags=["figure"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
plot_metrics(axes[0], FT_DIR, "train", ["loss", "id_loss", "triplet_loss"],
             title="fine-tuning losses")
plot_metrics(axes[1], FT_DIR, "eval", ["mAP", "rank1"], marker="o",
             title="retrieval on the evaluation split")
axes[1].set_ylim(0, 1)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Evaluate
#
# The evaluate stage on each build: without camera ids every other image of the query's person
# counts as a match; with them, same-camera images of that person are left out (grey frames in
# the rank lists), so the scores are lower and closer to what a new camera would see.

# %%
EVAL_DIRS = {}
for label, data_dir in builds.items():
    config = load_config("evaluate", "dataset=reid_folder")
    config.checkpoint = FT_DIR
    config.data.data_dir = data_dir
    config.ranks.num_queries = 3
    config.overwrite = True  # re-running this cell replaces this notebook's own evaluation
    EVAL_DIRS[label] = os.path.join(WORKDIR, "eval_" + label.replace(" ", "_"))
    r = evaluate.evaluate(config, EVAL_DIRS[label])
    print(f"{label:14s} mAP {r['mAP']:.3f}  mINP {r['mINP']:.3f}  rank-1 {r['rank1']:.3f}  "
          f"rank-5 {r['rank5']:.3f}  ({r['num_valid_queries']} of {r['num_queries']} queries)")

# %% tags=["figure"]
# The same queries in both evaluations (blue query; green match, red wrong, grey ignored).
for label, eval_dir in EVAL_DIRS.items():
    ranks_dir = os.path.join(eval_dir, "ranks")
    print(label)
    display(visualize.stack_rows([Image.open(os.path.join(ranks_dir, n))
                                  for n in sorted(os.listdir(ranks_dir))
                                  if n != "worst_queries.png"]))
