"""
Quality: how much a model's videos look like the toy world, measured by the world itself.

One table for the real data, the teacher (many Euler steps with guidance) and each student (its own
plan and context rule, read from its checkpoint):

- NFE: network evaluations per 16-frame video (a guided step counts 2).
- cleanliness: pixels that are background or a palette colour; objects/frame and its error against
  the real data; label agreement (seen shape and colour match the label); track jitter (median
  |acceleration| of object centroids); area change of matched objects from frame to frame; count
  changes (how often the number of objects changes from a frame to the next: objects that pop in and out).
- Frechet distance between per-video features of model and real clips (data.py), in all and on each
  group of features alone (colour, count, size, motion: which of them the distance comes from).
- chunk rhythm: the mean centroid step within a chunk and across chunk boundaries, and their ratio
  (`chunk_stutter`, 1 for the world): does a student move its objects in the rhythm of its chunks?
- motion (flow.py): amplitude ratio to the real data, coherence.
- drift over a rollout 10x the training length (students only; PAPER.md, "Exposure-bias alignment"):
  slope of the mean colour saturation per 100 frames, and its last quarter over its first quarter
  (1 = no drift; oversaturation shows as > 1). The same rollouts' first 2x training length (32
  frames) give track jitter and area change over streams past the training length.

With `--start_level S` a teacher does not sample from noise but finishes real clips noised to level S
(SDEdit): which of its steps make which faults (README, "Where the wobble is born"). With
`--second_look 0` a self-conditioned teacher gets zeros instead of its last estimate: the net that
distill.py's scores were before their own second look (EXPERIMENTS.md, "The scores' second look").

Plus three pictures: quality over time on long rollouts (the paper's "average quality over time"
figure), NFE against Frechet distance, and the chunk rhythm (mean step from each frame to the next).
Fixed seeds; the sample counts are printed; a JSON last line.

    python evaluate.py --ckpt assets/teacher.pt assets/student.pt --num 256
"""
import argparse
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from data import (FEATURE_GROUPS, NUM_LABELS, centroid_steps, frame_objects, frechet_distance, make_clips, nearest_color,
                  video_features, world_metrics)
from flow import motion_metrics
from model import build_model, load_checkpoint
from sample import GUIDANCE_CUTOFF, pick_device, plan_by_name, sample_teacher, stream, teacher_forward_passes
from schedule import forward_passes


def saturation(video):
    """Mean colour saturation per frame [N, F, 3, H, W] -> [F]: max minus min channel, averaged."""
    return (video.amax(2) - video.amin(2)).mean((0, 2, 3))


def chunk_rhythm(steps, chunk_frames):
    """Mean centroid step (px) from a frame to the next inside a chunk and across a chunk boundary, and
    the second over the first (steps: data.centroid_steps of each clip). A student that draws a chunk's
    frames too much alike and catches up at the next chunk's first frame stutters in the rhythm of its
    chunks (ratio above 1); the world reads 1."""
    within, across = [], []
    for clip_steps in steps:
        for frame_index, frame_steps in enumerate(clip_steps):
            (across if (frame_index + 1) % chunk_frames == 0 else within).extend(frame_steps)
    if not within or not across:
        return dict(step_within=float("nan"), step_across=float("nan"), chunk_stutter=float("nan"))
    return dict(step_within=float(np.mean(within)), step_across=float(np.mean(across)),
                chunk_stutter=float(np.mean(across) / np.mean(within)))


def measure(video, labels, real, chunk_frames):
    objects = frame_objects(video)
    metrics = world_metrics(video, labels, objects)
    features = video_features(video, objects)
    metrics["frechet"] = frechet_distance(features, real["features"])
    for group, columns in FEATURE_GROUPS.items():
        metrics[f"frechet_{group}"] = frechet_distance(features[:, columns], real["features"][:, columns])
    steps = [centroid_steps(clip) for clip in objects]
    metrics.update(chunk_rhythm(steps, chunk_frames))
    # the mean step from frame f to f + 1 over all clips, for each f: the chunk rhythm as a picture
    metrics["step_profile"] = [float(np.mean(sum(frame_steps, []))) if any(frame_steps) else float("nan")
                               for frame_steps in zip(*steps)]
    metrics.update(motion_metrics(video, objects))
    metrics["amplitude_ratio"] = metrics["amplitude"] / real["amplitude"]
    metrics["object_error"] = abs(metrics["objects_per_frame"] - real["objects_per_frame"]) / real["objects_per_frame"]
    return metrics


def drift(video):
    """Saturation drift of long videos: least-squares slope per 100 frames, last quarter / first quarter."""
    per_frame = saturation(video)
    frames = torch.arange(len(per_frame), dtype=torch.float32)
    slope = ((frames - frames.mean()) * (per_frame - per_frame.mean())).sum() / (frames - frames.mean()).square().sum()
    quarter = len(per_frame) // 4
    return dict(saturation_slope=100 * slope.item(), saturation_drift=(per_frame[-quarter:].mean() / per_frame[:quarter].mean()).item())


def stream_smoothness(video, labels, frames):
    """Track jitter and area change over the first `frames` frames of long streams: do objects keep
    their shape and move smoothly past the training length (issue 4 asks for 32-frame streams)?"""
    metrics = world_metrics(video[:, :frames], labels)
    return dict(stream_jitter=metrics["track_jitter"], stream_area_change=metrics["area_change"],
                stream_count_changes=metrics["count_changes"])


def student_recipe(state):
    """(plan name, context rule) a causal net streams with: its distillation's, or for a net trained
    chunk-causally by train.py (--causal=1, no distillation recipe) the shipped student's."""
    recipe = state.get("train_config", {})
    return recipe.get("plan", "diagonal"), recipe.get("context", "last")


def generate(model, state, labels, frames, batch_size, seed, steps, guidance, guidance_cutoff, eta, start_clips=None,
             start_level=1.0, second_look=True):
    """Videos in [0, 1] on the CPU, in seeded batches: sample_teacher for a teacher (Euler steps, with
    fresh noise at `eta` > 0; from `start_clips` in [0, 1] noised to `start_level`, if given), streaming
    for a student (with the plan and context rule it was distilled for)."""
    device = next(model.parameters()).device
    videos = []
    for first in tqdm(range(0, len(labels), batch_size), desc=f"sampling {frames} frames", leave=False):
        batch = labels[first:first + batch_size].to(device)
        if model.causal:
            video = torch.cat(list(stream(model, batch, frames, *student_recipe(state), "sequential", seed + first)), 1)
        else:
            start = None if start_clips is None else start_clips[first:first + batch_size] * 2 - 1
            video = sample_teacher(model, batch, frames, steps, guidance, guidance_cutoff, seed=seed + first, eta=eta,
                                   start=start, start_level=start_level, second_look=second_look)
        videos.append(((video.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(videos)


def plot(rows, long_videos, real_long, chunk_frames, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, video in {"real data": real_long, **long_videos}.items():
        clean = (nearest_color(video) != -2).float().mean((0, 2, 3))
        axes[0].plot(clean, label=name, lw=1)
        axes[1].plot(saturation(video), label=name, lw=1)
    axes[0].set(xlabel="frame", ylabel="frame cleanliness", title="quality over a long rollout")
    axes[1].set(xlabel="frame", ylabel="mean colour saturation", title="saturation drift")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "quality_over_time.png"), dpi=100)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, metrics in rows.items():
        if "nfe" in metrics:
            ax.scatter(metrics["nfe"], metrics["frechet"])
            ax.annotate(name, (metrics["nfe"], metrics["frechet"]), fontsize=7)
    ax.set(xscale="log", xlabel="NFE per 16-frame video", ylabel="Frechet distance to real data (lower is better)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "nfe_quality.png"), dpi=100)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, metrics in rows.items():
        ax.plot(range(1, len(metrics["step_profile"]) + 1), metrics["step_profile"], marker=".", lw=1, label=name)
    for boundary in range(chunk_frames, len(rows["real data"]["step_profile"]) + 1, chunk_frames):
        ax.axvline(boundary, color="0.85", lw=0.8, zorder=0)
    ax.set(xlabel="step from frame f - 1 to f (grey: f starts a chunk)", ylabel="mean centroid step (px)",
           title="chunk rhythm: how far objects move between frames")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "chunk_rhythm.png"), dpi=100)
    print(f"wrote {out_dir}/quality_over_time.png, {out_dir}/nfe_quality.png and {out_dir}/chunk_rhythm.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description="World metrics of real clips, a teacher and students.")
    parser.add_argument("--ckpt", nargs="+", default=["assets/teacher.pt", "assets/student.pt"])
    parser.add_argument("--num", type=int, default=256, help="samples per row")
    parser.add_argument("--long_num", type=int, default=32, help="samples per student for the 10x-long rollouts")
    parser.add_argument("--long_factor", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50, help="teacher: Euler steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="teacher: guidance scale")
    parser.add_argument("--guidance_cutoff", type=float, default=GUIDANCE_CUTOFF, help="teacher: guide only at noise levels up to this (1: all)")
    parser.add_argument("--eta", type=float, default=0.0, help="teacher: share of fresh noise per step, 0 (ODE) to 1 (ancestral)")
    parser.add_argument("--start_level", type=float, default=1.0,
                        help="teacher: start from real clips noised to this level, not from noise (1)")
    parser.add_argument("--second_look", type=int, default=1, choices=(0, 1),
                        help="teacher: 0 hands a self-conditioned teacher zeros instead of its last estimate")
    parser.add_argument("--frames", type=int, default=0, help="frames per clip of the main table (0: the training length; NFE stays per training-length clip)")
    parser.add_argument("--plot_dir", default="out/eval")
    args = parser.parse_args(argv)
    if args.num < 2:
        raise SystemExit(f"error: --num must be at least 2 (the Frechet distance needs a covariance), got {args.num}")
    if not 0 <= args.eta <= 1:
        raise SystemExit(f"error: --eta must be between 0 (the ODE) and 1 (ancestral sampling), got {args.eta}")
    if not 0 <= args.start_level <= 1:
        raise SystemExit(f"error: --start_level must be between 0 (the real clips) and 1 (pure noise), "
                         f"got {args.start_level}")
    device = pick_device()
    models = [(path, *load_checkpoint(path, device)) for path in args.ckpt]
    if args.start_level < 1 and any(state.get("causal") for _, state, _ in models):
        raise SystemExit("error: --start_level is for teachers (a student streams from noise); leave the students out")
    config = models[0][2]
    if any(m[2] != config for m in models):
        raise SystemExit("error: the checkpoints have different model configs; evaluate one world size at a time")
    labels = torch.arange(args.num) % NUM_LABELS
    frames = args.frames or config.frames
    if frames < 3:
        raise SystemExit(f"error: --frames must be at least 3 (jitter needs three frames), got {frames}")
    # the reference real clips share the samples' labels; a second real set gives the real-vs-real row
    reference = make_clips(args.num, frames, config.image_size, seed=10_000 + args.seed, labels=labels)["video"]
    real = dict(features=video_features(reference), amplitude=motion_metrics(reference)["amplitude"],
                objects_per_frame=world_metrics(reference, labels)["objects_per_frame"])
    second = make_clips(args.num, frames, config.image_size, seed=20_000 + args.seed, labels=labels)["video"]
    rows = {"real data": measure(second, labels, real, config.chunk_frames)}
    long_frames = args.long_factor * config.frames
    long_labels = torch.arange(args.long_num) % NUM_LABELS
    real_long = make_clips(args.long_num, long_frames, config.image_size, seed=30_000 + args.seed, labels=long_labels)["video"]
    stream_frames = 2 * config.frames
    rows["real data"].update(drift(real_long), **stream_smoothness(real_long, long_labels, stream_frames))
    # a third real set for the teacher to finish from --start_level (SDEdit): which levels decide what
    start_clips = None if args.start_level == 1 else make_clips(args.num, frames, config.image_size,
                                                                seed=40_000 + args.seed, labels=labels)["video"]
    long_videos = {}
    for path, state, mconfig in models:
        model = build_model(state, mconfig, device)
        start = time.perf_counter()
        video = generate(model, state, labels, frames, args.batch_size, args.seed, args.steps, args.guidance,
                         args.guidance_cutoff, args.eta, start_clips, args.start_level, bool(args.second_look))
        rows[path] = measure(video, labels, real, config.chunk_frames)
        rows[path]["seconds"] = time.perf_counter() - start
        if model.causal:
            plan_name, context = student_recipe(state)
            plan = plan_by_name(plan_name, -(-mconfig.frames // mconfig.chunk_frames))
            rows[path]["nfe"] = forward_passes(plan, context)
            long_videos[path] = generate(model, state, long_labels, long_frames, args.batch_size, args.seed, args.steps,
                                         args.guidance, args.guidance_cutoff, args.eta)
            rows[path].update(drift(long_videos[path]), **stream_smoothness(long_videos[path], long_labels, stream_frames))
        else:
            rows[path]["nfe"] = teacher_forward_passes(args.steps, args.guidance, args.guidance_cutoff,
                                                       args.start_level)

    print(f"{args.num} samples of {frames} frames per row ({args.long_num} for the {long_frames}-frame drift rollouts, whose first "
          f"{stream_frames} frames give the stream_ columns), seed {args.seed}, "
          f"device {device}; the real-data row is a second real set against the reference; a teacher takes {args.steps} "
          f"steps, guidance {args.guidance} up to level {args.guidance_cutoff}, eta {args.eta}, from "
          + ("noise" if start_clips is None else
             f"real clips (seed {40_000 + args.seed}) noised to level {args.start_level}")
          + ("" if args.second_look else ", a self-conditioned one without its second look"))
    for columns in (["nfe", "cleanliness", "objects_per_frame", "object_error", "label_agreement", "track_jitter",
                     "area_change", "frechet", "amplitude_ratio", "coherence", "saturation_slope", "saturation_drift",
                     "stream_jitter", "stream_area_change"],
                    ["frechet", *(f"frechet_{group}" for group in FEATURE_GROUPS), "step_within", "step_across",
                     "chunk_stutter", "count_changes", "stream_count_changes"]):
        print(f"{'':24s}" + "".join(f"{c[:15]:>16s}" for c in columns))
        for name, metrics in rows.items():
            print(f"{name[-24:]:24s}" + "".join(f"{metrics.get(c, float('nan')):16.3f}" for c in columns))
    plot(rows, long_videos, real_long, config.chunk_frames, args.plot_dir)
    print(json.dumps({name: {k: [round(x, 3) for x in v] if isinstance(v, list) else round(v, 4) for k, v in m.items()}
                      for name, m in rows.items()}))


if __name__ == "__main__":
    main()
