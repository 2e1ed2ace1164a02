"""
The toy world: moving shapes, with exact ground truth and world-aware quality metrics.

The paper distils Wan2.1 on real video; a laptop needs a world it can learn in minutes. Each clip
has 1 to 3 objects of one shape and one saturated colour (the clip's label, its "prompt", e.g.
"red circle") on a dark background, moving at constant velocity and bouncing off the walls.
Because we generate the world, we know everything about it: object masks, centroids and the exact
optical flow of every pixel. And because the world is so plain we can judge any video, real or
generated, with simple measurements instead of a learned network: how clean its frames are (every
pixel background or a palette colour), how many objects it shows and of what size, whether they match
the label, how smoothly they move, and a Frechet distance between per-video features.

Videos are float tensors [N, F, 3, H, W] in [0, 1]; the models see them scaled to [-1, 1].
    python data.py                                  # writes assets/real.gif, a grid of real clips
    python data.py --out real.npz --num 64 --frames 16
"""
import argparse
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SHAPES = ["circle", "square", "triangle"]
COLORS = {"red": (0.95, 0.12, 0.12), "green": (0.12, 0.85, 0.15), "blue": (0.2, 0.35, 1.0),
          "yellow": (0.95, 0.9, 0.1), "magenta": (0.9, 0.15, 0.9), "cyan": (0.1, 0.9, 0.9)}
PALETTE = torch.tensor(list(COLORS.values()))
BACKGROUND = torch.tensor([0.05, 0.05, 0.08])
LABELS = [f"{color} {shape}" for shape in SHAPES for color in COLORS]   # label = shape * 6 + colour
NUM_LABELS = len(LABELS)                                                 # index NUM_LABELS is "null"


def label_index(text):
    """A label given as a name ("red circle") or an index ("3") -> its index, or a clear error."""
    if text.isdigit() and int(text) < NUM_LABELS:
        return int(text)
    if text in LABELS:
        return LABELS.index(text)
    raise SystemExit(f"error: unknown label {text!r}; use 0..{NUM_LABELS - 1} or one of: {', '.join(LABELS)}")


def bounce(start, velocity, times, low, high):
    """Closed-form position of a point moving at constant velocity and reflecting off [low, high]."""
    span = high - low
    u = torch.remainder(start - low + velocity * times, 2 * span)
    return low + torch.where(u <= span, u, 2 * span - u)


def inside(shape, dx, dy, radius):
    """Is the offset (dx, dy) from the centre inside the shape? Works on any broadcastable tensors."""
    circle = dx ** 2 + dy ** 2 <= radius ** 2
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.85 * radius
    # triangle, apex up: y runs from -radius (apex) to 0.8 radius (base), half-width grows to radius
    triangle = (dy >= -radius) & (dy <= 0.8 * radius) & (dx.abs() <= (dy + radius) / 1.8)
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def make_clips(num, frames=16, size=32, seed=0, max_objects=3, labels=None):
    """Generate `num` clips. Returns a dict: video [N,F,3,H,W] in [0,1], labels [N],
    masks [N,O,F,H,W] (bool, per object), centroids [N,O,F,2] (x, y in pixels), active [N,O],
    flow [N,F,2,H,W] (displacement of each pixel's object to the next frame; zero on background)."""
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        labels = torch.randint(0, NUM_LABELS, (num,), generator=g)
    labels = torch.as_tensor(labels).long().expand(num).clone()
    shape, color = labels // len(COLORS), labels % len(COLORS)
    count = torch.randint(1, max_objects + 1, (num,), generator=g)
    active = torch.arange(max_objects)[None] < count[:, None]                                 # [N,O]
    radius = size / 32 * (3.5 + 2.0 * torch.rand(num, max_objects, generator=g))               # [N,O]
    margin = radius + 1
    start = margin[..., None] + torch.rand(num, max_objects, 2, generator=g) * (size - 2 * margin[..., None])
    speed = size / 32 * (1.0 + 2.0 * torch.rand(num, max_objects, generator=g))
    angle = 2 * math.pi * torch.rand(num, max_objects, generator=g)
    velocity = torch.stack([angle.cos(), angle.sin()], -1) * speed[..., None]                 # [N,O,2]
    times = torch.arange(frames + 1).float()                                                   # one extra for flow
    lo, hi = margin[..., None, None], size - margin[..., None, None]
    centers = bounce(start[:, :, None], velocity[:, :, None], times[None, None, :, None], lo, hi)  # [N,O,F+1,2]

    pixel = torch.arange(size).float() + 0.5
    dx = pixel[None, None, None, None, :] - centers[:, :, :frames, 0, None, None]             # [N,O,F,1,W]
    dy = pixel[None, None, None, :, None] - centers[:, :, :frames, 1, None, None]             # [N,O,F,H,1]
    r = radius[:, :, None, None, None]
    masks = inside(shape[:, None, None, None, None], dx, dy, r) & active[:, :, None, None, None]
    covered = masks.any(1)                                                                     # [N,F,H,W]
    rgb = PALETTE[color][:, None, :, None, None]
    video = torch.where(covered[:, :, None], rgb, BACKGROUND[None, None, :, None, None]).contiguous()

    step = centers[:, :, 1:] - centers[:, :, :-1]                                              # [N,O,F,2]
    flow = torch.zeros(num, frames, 2, size, size)
    for o in range(max_objects):  # where objects overlap, the pixel follows the last one drawn
        flow = torch.where(masks[:, o, :, None], step[:, o, :, :, None, None], flow)
    return dict(video=video, labels=labels, masks=masks, centroids=centers[:, :, :frames],
                active=active, flow=flow, shape=shape, radius=radius)


# ----------------------------------------------------------------------------- metrics
# Every metric takes videos [N, F, 3, H, W] in [0, 1], real or generated.

def nearest_color(video, tolerance=0.25):
    """Per pixel: palette index (0..5), -1 for background, -2 for a colour that is neither."""
    refs = torch.cat([PALETTE, BACKGROUND[None]])                                             # [7,3]
    dist = (video.movedim(2, -1)[..., None, :] - refs).norm(dim=-1)                            # [N,F,H,W,7]
    best_dist, best = dist.min(-1)
    best = torch.where(best == len(PALETTE), -1, best)
    return torch.where(best_dist <= tolerance, best, -2)


def cleanliness(video):
    """Fraction of pixels within tolerance of the background or a palette colour."""
    return (nearest_color(video) != -2).float().mean().item()


def components(color_map, min_size=4):
    """Connected components (4-neighbour) of same-colour object pixels, frame by frame.
    Returns ids [N,F,H,W] (-1 off objects): each component is named by its smallest pixel index."""
    N, Fr, H, W = color_map.shape
    on = color_map >= 0
    big = H * W
    ids = torch.where(on, torch.arange(H * W).view(1, 1, H, W).expand(N, Fr, H, W), big)
    while True:  # propagate the minimum id to 4-neighbours of the same colour until nothing changes
        padded = F.pad(ids.float(), (1, 1, 1, 1), value=big)
        cpad = F.pad(color_map.float(), (1, 1, 1, 1), value=-9)
        new = ids
        for sy, sx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            neighbour = padded[..., sy:sy + H, sx:sx + W].long()
            same = cpad[..., sy:sy + H, sx:sx + W] == color_map.float()
            new = torch.where(on & same, torch.minimum(new, neighbour), new)
        if torch.equal(new, ids):
            break
        ids = new
    ids = torch.where(on, ids, -1)
    flat = ids.flatten(2)
    sizes = torch.zeros(N, Fr, big + 1, dtype=torch.long).scatter_add_(2, flat.clamp(min=0) + (flat < 0) * big,
                                                                        torch.ones_like(flat))
    small = torch.gather(sizes, 2, flat.clamp(min=0)) < min_size
    return torch.where(small.view_as(ids), -1, ids)


def frame_objects(video):
    """List per video, per frame, of objects: (x, y, area, fill ratio of bounding box, colour)."""
    color_map = nearest_color(video)
    ids = components(color_map)
    N, Fr, H, W = ids.shape
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    result = []
    for n in range(N):
        per_frame = []
        for f in range(Fr):
            objs = []
            frame_ids, cmap = ids[n, f], color_map[n, f]
            for comp in frame_ids.unique():
                if comp < 0:
                    continue
                m = frame_ids == comp
                area = m.sum().item()
                x, y = xs[m], ys[m]
                box = (x.max() - x.min() + 1) * (y.max() - y.min() + 1)
                objs.append((x.mean().item() + 0.5, y.mean().item() + 0.5, area, area / box.item(),
                             cmap[m][0].item()))
            per_frame.append(objs)
        result.append(per_frame)
    return result


def classify_shape(fill):
    """Shape from the fraction of its bounding box an object fills (square 1, circle pi/4, triangle 1/2)."""
    return int(np.argmin([abs(fill - 0.78), abs(fill - 1.0), abs(fill - 0.52)]))


def world_metrics(video, labels, objects=None):
    """The quality table of one batch: cleanliness, objects per frame, label agreement (also per
    labelled shape, with the median bounding-box fill of the objects in the label's colour, which is
    what tells the shapes apart) and the smoothness of object tracks (|acceleration| of matched
    centroids, px/frame^2) and permanence (`count_changes`: the fraction of frame-to-frame steps at
    which the number of objects changes; the world's objects never leave the frame and a clip's
    objects share its colour, so its count changes only when two of them touch or part)."""
    objects = frame_objects(video) if objects is None else objects
    counts = [len(o) for clip in objects for o in clip]
    count_changes = [float(len(a) != len(b)) for clip in objects for a, b in zip(clip[:-1], clip[1:])]
    agree, jitter, area_change = [], [], []
    agree_by_shape = {shape: [] for shape in SHAPES}     # which shapes a model misses, by the label's shape
    fill_by_shape = {shape: [] for shape in SHAPES}
    for clip, label in zip(objects, labels.tolist()):
        colors = [o[4] for frame in clip for o in frame for _ in range(o[2])]
        shapes = [classify_shape(o[3]) for frame in clip for o in frame]
        if colors:
            color = max(set(colors), key=colors.count)
            shape = max(set(shapes), key=shapes.count)
            agree.append(float(shape * len(COLORS) + color == label))
        else:
            agree.append(0.0)
        label_shape, label_color = divmod(label, len(COLORS))
        agree_by_shape[SHAPES[label_shape]].append(agree[-1])
        fill_by_shape[SHAPES[label_shape]] += [o[3] for frame in clip for o in frame if o[4] == label_color]
        jitter += track_accelerations(clip)
        area_change += [abs(a - b) / max(a, b) for a, b in matched_areas(clip)]
    return dict(cleanliness=cleanliness(video), objects_per_frame=float(np.mean(counts)),
                objects_std=float(np.std(counts)), label_agreement=float(np.mean(agree)),
                track_jitter=float(np.median(jitter)) if jitter else float("nan"),
                area_change=float(np.mean(area_change)) if area_change else float("nan"),
                count_changes=float(np.mean(count_changes)) if count_changes else float("nan"),
                **{f"label_agreement_{shape}": float(np.mean(a)) for shape, a in agree_by_shape.items() if a},
                **{f"fill_{shape}": float(np.median(f)) for shape, f in fill_by_shape.items() if f})


def _match(prev, cur):
    """Nearest-centroid matches between the objects of two frames (each object used once)."""
    pairs = sorted((math.dist(a[:2], b[:2]), i, j) for i, a in enumerate(prev) for j, b in enumerate(cur))
    used_i, used_j, out = set(), set(), []
    for d, i, j in pairs:
        if i not in used_i and j not in used_j:
            used_i.add(i), used_j.add(j), out.append((i, j))
    return out


def matched_areas(clip):
    return [(clip[f][i][2], clip[f + 1][j][2]) for f in range(len(clip) - 1) for i, j in _match(clip[f], clip[f + 1])]


def track_accelerations(clip):
    """|c[f+1] - 2 c[f] + c[f-1]| along matched tracks; constant velocity gives 0, bounces a little."""
    out = []
    for f in range(1, len(clip) - 1):
        for i, j in _match(clip[f], clip[f + 1]):
            for k, i2 in _match(clip[f], clip[f - 1]):
                if k == i:
                    a, b, c = clip[f - 1][i2], clip[f][i], clip[f + 1][j]
                    out.append(math.hypot(c[0] - 2 * b[0] + a[0], c[1] - 2 * b[1] + a[1]))
    return out


def centroid_steps(clip):
    """Per frame f, the distances (px) the matched objects' centroids move from frame f to f + 1."""
    return [[math.dist(clip[f][i][:2], clip[f + 1][j][:2]) for i, j in _match(clip[f], clip[f + 1])]
            for f in range(len(clip) - 1)]


def video_features(video, objects=None):
    """Per-video features for a Frechet distance: colour histogram, object count, size and motion."""
    objects = frame_objects(video) if objects is None else objects
    cmap = nearest_color(video)
    hist = torch.stack([(cmap == k).float().mean((1, 2, 3)) for k in range(-2, len(PALETTE))], 1)
    rows = []
    for clip in objects:
        counts = [len(o) for o in clip]
        areas = [o[2] for frame in clip for o in frame] or [0]
        steps = [step for per_frame in centroid_steps(clip) for step in per_frame] or [0]
        rows.append([np.mean(counts), np.std(counts), np.mean(areas) / 10, np.std(areas) / 10,
                     np.mean(steps), np.std(steps)])
    return torch.cat([hist * 10, torch.tensor(rows, dtype=torch.float32)], 1).double()


# The columns of video_features by what they describe, to ask which of them a Frechet distance comes from.
FEATURE_GROUPS = dict(colour=slice(0, len(PALETTE) + 2), count=slice(-6, -4), size=slice(-4, -2), motion=slice(-2, None))


def frechet_distance(features_a, features_b):
    """||mu_a - mu_b||^2 + Tr(Ca + Cb - 2 (Ca Cb)^1/2), the statistic behind FID."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = torch.cov(features_a.T), torch.cov(features_b.T)
    eig = torch.linalg.eigvals(cov_a @ cov_b)
    return ((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace()
            - 2 * eig.sqrt().real.sum()).item()


# ----------------------------------------------------------------------------- output

def to_uint8(video):
    """[N,F,3,H,W] in [0,1] -> numpy uint8 [N,F,H,W,3]."""
    return (video.clamp(0, 1) * 255).round().byte().permute(0, 1, 3, 4, 2).numpy()


def save_gif(video, path, columns=8, scale=3, fps=8):
    """Write a grid of clips (videos [N,F,3,H,W] in [0,1]) as an animated GIF."""
    frames = to_uint8(video)
    N, Fr, H, W, _ = frames.shape
    columns = min(columns, N)
    rows = math.ceil(N / columns)
    grid = np.zeros((Fr, rows * (H + 2), columns * (W + 2), 3), dtype=np.uint8)
    for n in range(N):
        r, c = divmod(n, columns)
        grid[:, r * (H + 2) + 1:r * (H + 2) + 1 + H, c * (W + 2) + 1:c * (W + 2) + 1 + W] = frames[n]
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in grid]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def save_npz(video, labels, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez_compressed(path, frames=to_uint8(video), labels=labels.numpy())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Generate real clips of the toy world.")
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write clips to this .npz instead of a GIF")
    args = parser.parse_args()
    clips = make_clips(args.num, args.frames, args.size, args.seed)
    if args.out:
        save_npz(clips["video"], clips["labels"], args.out)
        print(f"wrote {args.num} clips to {args.out}")
    else:
        save_gif(clips["video"], "assets/real.gif")
        print("wrote assets/real.gif;", {k: round(v, 3) for k, v in world_metrics(clips["video"], clips["labels"]).items()})
