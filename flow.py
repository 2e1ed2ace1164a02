"""
Motion: the paper's implicit optical flow, the flow-DMD loss built on it, an explicit optical-flow
estimator, and motion metrics (how far and how smoothly things move).

A few-step student tends to lose motion: objects move less than in the teacher's videos, or barely at
all (PAPER.md, "The optical-flow (motion) loss": "motion degradation and amplitude attenuation"). The
released code needs no flow network for the fix: its "flow" is the frame difference
D(y)_f = y_{f+1} - y_f, and the loss is distribution matching (DMD) applied to D(y) instead of y.
In reading order:

1. `frame_differences`: the implicit flow.
2. `dmd_loss` and `flow_dmd_loss`: DMD on the frames (PAPER.md, "Training") and DMD on the motion, side
   by side because they share the normaliser; distill.py adds them up (dmd_weight L_DMD + flow_weight
   L_flow: 1 + 1 here, 4 + 4 in the release). Two of the three releases computed the motion term
   entirely under no_grad, so it trained nothing; the tests check both gradients against the formulas
   written here.
3. `estimate_flow`: an explicit, differentiable optical flow for small frames (block matching on a
   cost volume, then a sub-pixel step). It measures motion, and `flow_repr="flow"` lets the flow loss
   match it instead of frame differences, as an ablation.
4. `motion_metrics`: amplitude (px a frame on object pixels) and coherence (do object tracks keep a
   constant velocity between bounces), for real and generated videos alike.

    python flow.py        # writes assets/flow.png (exact vs estimated flow), prints its error and the real-data metrics
"""
import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from data import frame_objects, make_clips, nearest_color, track_accelerations

# ----------------------------------------------------------------------------- the implicit flow


def frame_differences(video):
    """D(y)_f = y_{f+1} - y_f along the frame axis: [B, F, C, H, W] -> [B, F-1, C, H, W]."""
    return video[:, 1:] - video[:, :-1]


# ----------------------------------------------------------------------------- DMD on frames and on motion
# Both losses take the student's clip (with gradient) and, at the same noised input, the critic's ("fake")
# and the guided teacher's ("real") clean predictions (no gradient), in model space [-1, 1].

FLOW_REPRS = ("diff", "flow")


def dmd_gradient(sample, fake_x0, real_x0, eps=1e-6):
    """g = (x0_fake - x0_real) / mean|x - x0_real|, the normaliser taken per sample; no gradient.
    The normaliser gives every sample a step of similar size whatever its noise level; `eps` only
    guards the division for a sample equal to the teacher's prediction."""
    with torch.no_grad():
        normaliser = (sample - real_x0).abs().flatten(1).mean(1).clamp(min=eps)
        return (fake_x0 - real_x0) / normaliser.view(-1, *[1] * (sample.dim() - 1))


def dmd_loss(student_video, fake_x0, real_x0):
    """0.5 * mean((x - sg(x - g))^2). Its value is 0.5 mean(g^2) and its gradient w.r.t. x is exactly
    g / numel: descending it moves the clip towards the teacher's prediction and away from the critic's."""
    g = dmd_gradient(student_video, fake_x0, real_x0)
    return 0.5 * (student_video - (student_video - g).detach()).square().mean()


def pair_weights(num_pairs, device=None):
    """Detached weights of the frame pairs, growing with f as in the releases. Ours are the simplest such:
    linear, w_f = 2 (f + 1) / (num_pairs + 1), mean 1, so the loss keeps the scale of a plain mean."""
    return 2 * torch.arange(1, num_pairs + 1, dtype=torch.float32, device=device) / (num_pairs + 1)


def motion(video, flow_repr="diff"):
    """The motion representation the flow loss matches: frame differences [B, F-1, C, H, W] (the
    paper's), or estimated optical flow [B, F-1, 2, H, W] of a model-space video."""
    if flow_repr == "diff":
        return frame_differences(video)
    if flow_repr == "flow":
        return estimate_flow((video + 1) / 2)
    raise ValueError(f"unknown flow_repr {flow_repr!r}; use one of {', '.join(FLOW_REPRS)}")


def flow_dmd_loss(student_video, fake_x0, real_x0, flow_repr="diff"):
    """L_flow = 0.5 * mean_f w_f * mean((D x_f - sg(D x_f - g_mot_f))^2), with
    g_mot = (D x0_fake - D x0_real) / mean|D x - D x0_real|: DMD applied to the motion. The gradient w.r.t.
    D x is w_f g_mot / numel(D x); it reaches the frames through D (or through the flow estimator)."""
    moving = motion(student_video, flow_repr)  # the only tensor here that carries a gradient
    with torch.no_grad():
        g = dmd_gradient(moving, motion(fake_x0, flow_repr), motion(real_x0, flow_repr))
    per_pair = (moving - (moving - g).detach()).square().mean(dim=(0, 2, 3, 4))  # [F-1]
    return 0.5 * (pair_weights(len(per_pair), moving.device) * per_pair).mean()


# ----------------------------------------------------------------------------- an explicit optical flow
# Objects are flat-coloured, so inside an object every small shift matches perfectly: a pixel can only be
# placed by its object's *edges*. So we match neighbourhoods, not pixels: the matching cost of each
# displacement is summed over a Gaussian window wide enough to reach an object's edges from its middle.
# Block matching tries every integer displacement the world allows (a cost volume), keeps the cheapest,
# and a parabola through its neighbours' costs gives the sub-pixel part, differentiably.
# How good (python flow.py, 128 clips): 0.47 px mean end-point error on object pixels, 0.40 px where one
# object covers the pixel, in about a second for 64 clips of 16 frames on one CPU core. Much of what is
# left cannot be seen in the frames: shapes are drawn with hard pixel edges (a square moving 2.2 px shows
# edges moving 2 or 3 px; steps of drawn centroids miss the exact steps by 0.23 px on average), and objects of
# one colour that touch merge into one blob whose pixels could belong to either.

MAX_SPEED = 3.0    # px a frame in the 32-pixel world (data.py: speed = size / 32 * (1 + 2u)): the search radius
BLUR = 1.0         # px, blur of the frames before matching: makes the cost smooth in the displacement
WINDOW = 4.0       # px, sigma of the window a cost is summed over (objects have radius 3.5 to 5.5)
TRUNCATION = 0.1   # cap on one pixel's squared colour difference (frames in [0, 1]), so that a second
                   # object's misplaced edges in the window cannot outvote the first's
TIE_BREAK = 1e-4   # extra cost per px^2 of displacement: decides only ties (flat background) in favour of 0


def gaussian_blur(images, sigma):
    """Separable Gaussian blur of [N, C, H, W], edges replicated."""
    radius = max(1, math.ceil(2.5 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    taps = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    taps = (taps / taps.sum()).view(1, 1, 1, -1).expand(images.shape[1], 1, 1, -1)
    images = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), taps, groups=images.shape[1])
    return F.conv2d(F.pad(images, (0, 0, radius, radius), mode="replicate"), taps.transpose(2, 3), groups=images.shape[1])


def matching_costs(first, second, radius, window):
    """Cost volume [N, (2r+1)^2, H, W], displacements row-major (dy slow, dx fast): the truncated squared
    colour difference between `first` and `second` shifted by (dx, dy), averaged over a Gaussian window."""
    N, C, H, W = first.shape
    size = 2 * radius + 1
    shifted = F.unfold(F.pad(second, (radius,) * 4, mode="replicate"), size).view(N, C, size * size, H, W)
    costs = (first[:, :, None] - shifted).square().sum(1).clamp(max=TRUNCATION)
    # the windowed cost is smooth at the window's scale: summing it on a half-resolution grid is 4x cheaper
    coarse = gaussian_blur(F.avg_pool2d(costs, 2, ceil_mode=True), window / 2)
    return F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)


def parabola_vertex(cost_before, cost_best, cost_after):
    """Where the parabola through the costs at -1, 0, +1 has its minimum, within [-0.5, 0.5]."""
    curvature = (cost_before - 2 * cost_best + cost_after).clamp(min=1e-12)
    return ((cost_before - cost_after) / (2 * curvature)).clamp(-0.5, 0.5)


def estimate_flow(video, pairs_per_chunk=64):
    """Optical flow between consecutive frames: video [B, F, C, H, W] in [0, 1] -> [B, F-1, 2, H, W],
    (dx, dy) in pixels as data.py's exact flow (frame f's pixel (x, y) is at (x + dx, y + dy) in frame f+1).
    Differentiable w.r.t. the video through the sub-pixel step; the integer choice itself is piecewise constant."""
    B, Fr, C, H, W = video.shape
    scale = W / 32  # the world's sizes and speeds grow with the frame (data.py)
    radius = math.ceil(MAX_SPEED * scale)
    size = 2 * radius + 1
    shifts = torch.arange(-radius, radius + 1, dtype=video.dtype, device=video.device)
    tie_break = TIE_BREAK * (shifts[:, None] ** 2 + shifts[None, :] ** 2).view(1, size * size, 1, 1)
    # the best displacement and its four neighbours, as (dy, dx) steps in the volume: best, left, right, up, down
    step_y = torch.tensor([0, 0, 0, -1, 1], device=video.device).view(1, 5, 1, 1)
    step_x = torch.tensor([0, -1, 1, 0, 0], device=video.device).view(1, 5, 1, 1)
    first = gaussian_blur(video[:, :-1].reshape(-1, C, H, W), BLUR * scale)
    second = gaussian_blur(video[:, 1:].reshape(-1, C, H, W), BLUR * scale)
    flows = []
    for start in range(0, len(first), pairs_per_chunk):  # a small volume stays in cache: ~3x faster on a CPU
        pair = slice(start, start + pairs_per_chunk)
        costs = matching_costs(first[pair], second[pair], radius, WINDOW * scale) + tie_break
        best = costs.argmin(1, keepdim=True)
        best_y, best_x = best // size, best % size
        # at the search border a missing neighbour repeats the best cost, and the final clamp keeps |d| <= r
        index = (best_y + step_y).clamp(0, size - 1) * size + (best_x + step_x).clamp(0, size - 1)
        cost_best, cost_left, cost_right, cost_up, cost_down = costs.gather(1, index).unbind(1)
        dx = best_x[:, 0] - radius + parabola_vertex(cost_left, cost_best, cost_right)
        dy = best_y[:, 0] - radius + parabola_vertex(cost_up, cost_best, cost_down)
        flows.append(torch.stack([dx, dy], 1).clamp(-radius, radius))
    return torch.cat(flows).view(B, Fr - 1, 2, H, W)


def endpoint_error(estimated, clips):
    """Mean |estimated - exact flow| (px) over the object pixels (data.py's masks) of each pair's first frame."""
    pairs = estimated.shape[1]
    on_object = clips["masks"].any(1)[:, :pairs]
    return (estimated - clips["flow"][:, :pairs]).norm(dim=2)[on_object].mean().item()


# ----------------------------------------------------------------------------- motion metrics
# Videos [N, F, 3, H, W] in [0, 1] (data.py's convention), real or generated: no masks needed.

WALL_BAND = 5.0  # px (in the 32-pixel world) from a wall within which an object may bounce in the next frame


def object_pixels(videos):
    """[N, F, H, W] bool: pixels of a palette colour, the pixels data.py's object finder sees. (Not "anything
    but background": a generated video's faint background noise would then count as objects near every wall.)"""
    return nearest_color(videos) >= 0


@torch.no_grad()
def amplitude(videos):
    """Mean estimated flow magnitude (px a frame) over the object pixels of each pair's first frame
    (0 for videos without objects: nothing moves)."""
    speed = estimate_flow(videos).norm(dim=2)
    on_object = object_pixels(videos)[:, :-1]
    return speed[on_object].mean().item() if on_object.any() else 0.0


def coherence(videos, objects=None):
    """Mean |acceleration| (px/frame^2) of matched object centroids (data.py's track_accelerations) over
    the frame triples in which the world keeps velocities constant: the same number of objects in all three
    frames (none merging, splitting, appearing) and no object pixel within WALL_BAND of a wall in the middle
    frame, so no bounce. Why 5 px: at a bounce an object's nearest pixel is at most 1 + 0.2 * 5.5 px from the
    wall (data.py's margin), plus one frame at 3 px. Lower is more coherent; real clips are not at 0 because
    centroids of pixelated shapes jitter; a frozen video scores 0 (amplitude tells). NaN if no triple qualifies."""
    objects = frame_objects(videos) if objects is None else objects
    H, W = videos.shape[-2:]
    band = round(WALL_BAND * W / 32)
    near_border = torch.ones(H, W, dtype=torch.bool)
    near_border[band:H - band, band:W - band] = False
    near_wall = (object_pixels(videos) & near_border).flatten(2).any(2)  # [N, F]
    accelerations = []
    for n, clip in enumerate(objects):
        for f in range(1, len(clip) - 1):
            triple = clip[f - 1:f + 2]
            if not near_wall[n, f] and len({len(frame) for frame in triple}) == 1:
                accelerations += track_accelerations(triple)
    return float(np.mean(accelerations)) if accelerations else float("nan")


def motion_metrics(videos, objects=None):
    """{amplitude, coherence} of a batch of videos; pass data.frame_objects(videos) if you have it already."""
    videos = videos.detach().float().cpu()
    return dict(amplitude=amplitude(videos), coherence=coherence(videos, objects))


def amplitude_ratio(videos, real_videos):
    """Amplitude of `videos` over that of real clips: 1 moves like the world, below 1 is attenuated motion."""
    return amplitude(videos.detach().float().cpu()) / amplitude(real_videos.detach().float().cpu())


# ----------------------------------------------------------------------------- picture and check

def flow_to_rgb(flow, max_speed):
    """Colour-code flow [..., 2, H, W] as numpy [..., H, W, 3]: hue = direction, brightness = speed."""
    from matplotlib.colors import hsv_to_rgb
    dx, dy = flow.unbind(-3)
    hue = torch.atan2(dy, dx) / (2 * math.pi) % 1
    value = (torch.hypot(dx, dy) / max_speed).clamp(max=1)
    return hsv_to_rgb(torch.stack([hue, torch.ones_like(hue), value], -1).numpy())


def draw(clips, estimated, path="assets/flow.png"):
    """One row per clip: two frames, the exact flow, the estimated flow and its error, on object pixels
    (the estimate spreads into the flat background around objects, where no flow can be seen)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = estimated.shape[1] // 2
    on_object = clips["masks"][:, :, f].any(1)[:, None]                                       # [N,1,H,W]
    error = (estimated[:, f] - clips["flow"][:, f]).norm(dim=1) * on_object[:, 0]
    columns = [("frame f", clips["video"][:, f].permute(0, 2, 3, 1).numpy()),
               ("frame f+1", clips["video"][:, f + 1].permute(0, 2, 3, 1).numpy()),
               ("exact flow", flow_to_rgb(clips["flow"][:, f], MAX_SPEED)),
               ("estimated flow (object pixels)", flow_to_rgb(estimated[:, f] * on_object, MAX_SPEED))]
    rows = len(estimated)
    fig, axes = plt.subplots(rows, len(columns) + 2, figsize=(2 * (len(columns) + 2), 2 * rows), layout="constrained")
    for column, (title, images) in enumerate(columns):
        axes[0, column].set_title(title, fontsize=9)
        for n in range(rows):
            axes[n, column].imshow(images[n], interpolation="nearest")
    for n in range(rows):
        errors = axes[n, len(columns)].imshow(error[n].numpy(), vmin=0, vmax=2, cmap="magma", interpolation="nearest")
        axes[n, len(columns)].set_title(f"error: mean {error[n].sum() / on_object[n].sum():.2f} px", fontsize=9)
        axes[n, -1].axis("off")
    for ax in axes[:, :-1].flat:
        ax.set_xticks([]), ax.set_yticks([])
    key = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 65), torch.linspace(-1, 1, 65), indexing="xy")) * MAX_SPEED
    axes[0, -1].imshow(flow_to_rgb(key, MAX_SPEED), extent=(-MAX_SPEED, MAX_SPEED, MAX_SPEED, -MAX_SPEED))
    axes[0, -1].set_title("colour key: (dx, dy) in px", fontsize=9)
    axes[0, -1].axis("on")
    fig.colorbar(errors, ax=axes[1:, -1], label="error (px)", shrink=0.8)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check the flow estimator against the exact flow; real-data motion metrics.")
    parser.add_argument("--num", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    clips = make_clips(args.num, seed=args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        estimated = estimate_flow(clips["video"])
    seconds = time.perf_counter() - start
    N, Fr = clips["video"].shape[:2]
    single = clips["masks"].sum(1)[:, :Fr - 1] == 1
    single_error = (estimated - clips["flow"][:, :Fr - 1]).norm(dim=2)[single].mean().item()
    exact_amplitude = clips["flow"][:, :Fr - 1].norm(dim=2)[clips["masks"].any(1)[:, :Fr - 1]].mean().item()
    print(f"flow of {N} clips x {Fr} frames in {seconds:.2f} s (seed {args.seed}); mean end-point error on object pixels "
          f"{endpoint_error(estimated, clips):.3f} px, {single_error:.3f} px where exactly one object covers the pixel")
    metrics = motion_metrics(clips["video"])
    print(f"real-data motion metrics: amplitude {metrics['amplitude']:.3f} px/frame (exact flow: {exact_amplitude:.3f}), "
          f"coherence {metrics['coherence']:.3f} px/frame^2")
    # one clip per shape for the picture: circle, square, triangle (label = shape * 6 + colour)
    shown = make_clips(3, seed=args.seed, labels=torch.tensor([0, 7, 14]))
    with torch.no_grad():
        draw(shown, estimate_flow(shown["video"]))


if __name__ == "__main__":
    main()
