"""
Quality: how much a model's videos look like the toy world, measured by the world itself.

For the real data and for each checkpoint: frame cleanliness (pixels that are background or a palette
colour), objects per frame, label agreement (seen shape and colour match the label), track jitter
(mean |acceleration| of object centroids: constant velocity gives ~0, flicker and teleporting give
pixels), frame-to-frame area change (do objects keep their size) and a Frechet distance between
per-video features of model and real clips. Fixed seeds; the sample count is printed.

    python evaluate.py --ckpt assets/teacher.pt --num 256
"""
import argparse
import json
import time

import torch
from tqdm import tqdm

from data import NUM_LABELS, frame_objects, frechet_distance, make_clips, video_features, world_metrics
from model import build_model, load_checkpoint
from sample import pick_device, sample_teacher


def measure(video, labels, real_features):
    objects = frame_objects(video)
    metrics = world_metrics(video, labels, objects)
    metrics["frechet"] = frechet_distance(video_features(video, objects), real_features)
    return metrics


def generate(model, labels, frames, batch_size, seed, **sampler_args):
    """Sample in batches (seeded per batch) and return videos in [0, 1] on the CPU."""
    device = next(model.parameters()).device
    videos = []
    for start in tqdm(range(0, len(labels), batch_size), desc="sampling", leave=False):
        batch = labels[start:start + batch_size].to(device)
        video = sample_teacher(model, batch, frames, seed=seed + start, **sampler_args)
        videos.append(((video.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(videos)


def main(argv=None):
    parser = argparse.ArgumentParser(description="World metrics of real clips and of checkpoints.")
    parser.add_argument("--ckpt", nargs="+", default=["assets/teacher.pt"])
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args(argv)
    device = pick_device()
    models = [(path, *load_checkpoint(path, device)) for path in args.ckpt]
    config = models[0][2]
    labels = torch.arange(args.num) % NUM_LABELS
    # the reference real clips share the samples' labels; a second real set measures real-vs-real Frechet
    real = make_clips(args.num, config.frames, config.image_size, seed=10_000 + args.seed, labels=labels)
    real_features = video_features(real["video"])
    rows = {"real data": measure(real["video"], labels, real_features)}
    rows["real data"]["frechet"] = frechet_distance(
        video_features(make_clips(args.num, config.frames, config.image_size, seed=20_000 + args.seed, labels=labels)["video"]),
        real_features)
    for path, state, mconfig in models:
        model = build_model(state, mconfig, device)
        if model.causal:
            raise SystemExit(f"error: {path} is a causal student; evaluate.py measures teachers for now")
        start = time.perf_counter()
        video = generate(model, labels, mconfig.frames, args.batch_size, args.seed, steps=args.steps, guidance=args.guidance)
        rows[path] = measure(video, labels, real_features)
        rows[path]["nfe"] = args.steps * (2 if args.guidance != 1 else 1)
        rows[path]["seconds"] = time.perf_counter() - start

    print(f"{args.num} samples per row, seed {args.seed}, device {device}; real data Frechet = a second real set against the reference")
    columns = ["cleanliness", "objects_per_frame", "objects_std", "label_agreement", "track_jitter", "area_change", "frechet"]
    print(f"{'':28s}" + "".join(f"{c:>18s}" for c in columns))
    for name, metrics in rows.items():
        print(f"{name[-28:]:28s}" + "".join(f"{metrics[c]:18.3f}" for c in columns))
    print(json.dumps({name: {k: round(v, 4) for k, v in m.items()} for name, m in rows.items()}))


if __name__ == "__main__":
    main()
