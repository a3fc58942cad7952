r"""The PyTorch reference for `train_step.py --stage=finetune`, measured on the same machine.

  pip install -r requirements-convert.txt          # the PyTorch CPU wheel
  python benchmarks/torch_reference.py --model=vit_small --batch=64 [--attention=sdpa]

One PersonViT/TransReID fine-tune step in PyTorch: the ViT of the original model code (the
modules of tests/fixtures/make_weights_fixtures.py: unfused attention, `q @ k^T` then softmax)
or, with --attention=sdpa, `F.scaled_dot_product_attention` (what timm's fused attention uses);
BNNeck + classifier (751 ids), ID cross-entropy + soft-margin batch-hard triplet on the pre-BN
feature, SGD with momentum 0.9, on random 256x128 images. Prints one JSON line with the median
step time and img/s over --steps timed steps (after 2 warm-up steps), with
torch.get_num_threads() threads, so it sits next to our own figure from train_step.py.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))

import make_weights_fixtures as ref  # noqa: E402  (PyTorch ViT / ReID modules)

SIZES = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}


def sdpa_forward(self, x):
    """The fixtures' Attention with PyTorch's fused attention kernel."""
    b, n, d = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


def triplet_soft(feat, labels):
    """Soft-margin batch-hard triplet loss on Euclidean distances."""
    dist = torch.cdist(feat, feat).clamp_min(1e-6)
    same = labels[:, None] == labels[None]
    d_ap = torch.where(same, dist, torch.zeros_like(dist)).amax(1)
    d_an = torch.where(same, torch.full_like(dist, float("inf")), dist).amin(1)
    return F.softplus(d_ap - d_an).mean()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(SIZES), default="vit_small")
    p.add_argument("--batch", type=int, default=64, help="P x K with K = 4")
    p.add_argument("--attention", choices=["original", "sdpa"], default="original")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after 2 warm-up steps)")
    args = p.parse_args()
    if args.batch % 4:
        p.error("--batch must be a multiple of K = 4")
    if args.attention == "sdpa":
        ref.Attention.forward = sdpa_forward
    torch.manual_seed(0)
    width, heads = SIZES[args.model]
    model = ref.ReIDModel(ref.VisionTransformer(grid=(16, 8), width=width, depth=12,
                                                heads=heads, patch=16, stride=16),
                           num_classes=751)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=4e-4, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(args.batch, 3, 256, 128)
    labels = torch.arange(args.batch // 4).repeat_interleave(4)

    def step():
        feat = model.base(images)
        logits = model.classifier(model.bottleneck(feat))
        loss = F.cross_entropy(logits, labels) + triplet_soft(feat, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "stage": "finetune",
                      "model": args.model, "attention": args.attention, "batch": args.batch,
                      "image_size": "256x128", "threads": torch.get_num_threads(),
                      "step_time_s": round(dt, 4), "img_per_s": round(args.batch / dt, 2),
                      "timed_steps": args.steps}), flush=True)


if __name__ == "__main__":
    main()
