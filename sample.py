"""
Generating video.

Teacher half: the undistilled baseline. A bidirectional VideoDiT integrates the rectified-flow ODE
dx/ds = v(x, s) from pure noise (s = 1) to a clean clip (s = 0) with Euler steps, every frame at the
same noise level, with classifier-free guidance (conditional and unconditional in one batch).

    python sample.py --ckpt assets/teacher.pt --num 8 --label "red circle" --out out
"""
import argparse
import os
import time

import torch

from data import LABELS, NUM_LABELS, label_index, save_gif, save_npz
from model import build_model, load_checkpoint
from schedule import warp


def pick_device():
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def guided_velocity(model, video, noise_levels, labels, guidance):
    """v_uncond + guidance * (v_cond - v_uncond), both halves in one forward pass."""
    if guidance == 1.0:
        return model(video, noise_levels, labels)
    null = torch.full_like(labels, model.config.num_labels)
    v_cond, v_uncond = model(video.repeat(2, 1, 1, 1, 1), noise_levels.repeat(2, 1),
                             torch.cat([labels, null])).chunk(2)
    return v_uncond + guidance * (v_cond - v_uncond)


@torch.no_grad()
def sample_teacher(model, labels, frames, steps=50, guidance=3.0, shift=1.0, seed=0, return_path=False):
    """Euler sampling of whole clips; returns videos [N, F, 3, H, W] in [-1, 1] (and the x0 path)."""
    c = model.config
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(len(labels), frames, 3, c.image_size, c.image_size, generator=generator).to(device)
    levels = [warp(1 - i / steps, shift) for i in range(steps + 1)]
    path = []
    for level, next_level in zip(levels[:-1], levels[1:]):
        noise_levels = torch.full((len(labels), frames), level, device=device)
        v = guided_velocity(model, x, noise_levels, labels, guidance)
        if return_path:
            path.append(x - level * v)  # the current guess of the clean clip
        x = x + (next_level - level) * v
    return (x, path) if return_path else x


def main(argv=None):
    parser = argparse.ArgumentParser(description="Sample videos from a VideoDiT checkpoint.")
    parser.add_argument("--ckpt", default="assets/teacher.pt")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--frames", type=int, default=None, help="default: the training clip length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default=None, help=f"a name such as 'red circle' or an index 0..{NUM_LABELS - 1}; default: varied")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", default="out")
    args = parser.parse_args(argv)
    if args.num < 1:
        raise SystemExit("error: --num must be at least 1")

    device = pick_device()
    state, config = load_checkpoint(args.ckpt, device)
    model = build_model(state, config, device)
    frames = args.frames or config.frames
    if args.label is None:
        labels = torch.arange(args.num) % NUM_LABELS
    else:
        labels = torch.full((args.num,), label_index(args.label))
    start = time.perf_counter()
    video = sample_teacher(model, labels.to(device), frames, args.steps, args.guidance, seed=args.seed)
    seconds = time.perf_counter() - start
    video = ((video.float().cpu() + 1) / 2).clamp(0, 1)
    save_gif(video, os.path.join(args.out, "stream.gif"))
    save_npz(video, labels, os.path.join(args.out, "stream.npz"))
    print(f"{args.num} clips of {frames} frames ({', '.join(LABELS[i] for i in labels[:4].tolist())}...) "
          f"in {seconds:.2f}s on {device}: first frame after {seconds:.2f}s (a bidirectional teacher finishes "
          f"all frames at once), {args.num * frames / seconds:.1f} frames/s -> {args.out}/stream.gif, {args.out}/stream.npz")


if __name__ == "__main__":
    main()
