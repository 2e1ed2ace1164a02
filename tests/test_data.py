"""The toy world: determinism, speed-free shape checks, exact flow, and metrics that can tell good from bad."""
import pytest
import torch

from data import BACKGROUND, COLORS, LABELS, SHAPES, frechet_distance, inside, label_index, make_clips, video_features, world_metrics


def test_clips_are_deterministic_and_well_formed():
    a, b = make_clips(8, seed=3), make_clips(8, seed=3)
    assert torch.equal(a["video"], b["video"])
    assert not torch.equal(a["video"], make_clips(8, seed=4)["video"])
    assert a["video"].shape == (8, 16, 3, 32, 32) and a["video"].min() >= 0 and a["video"].max() <= 1
    assert len(LABELS) == 18 and label_index("red circle") == 0 and label_index("5") == 5


def test_flow_moves_every_object_pixel_onto_the_same_object_bounces_included():
    clips = make_clips(64, frames=16, seed=0)
    masks, centers, flow, shape, radius = (clips[k] for k in ("masks", "centroids", "flow", "shape", "radius"))
    N, O, Fr, H, W = masks.shape
    velocity = centers[:, :, 1:] - centers[:, :, :-1]
    bounces = (torch.sign(velocity[:, :, 1:]) != torch.sign(velocity[:, :, :-1])).sum().item()
    assert bounces > 20                                      # the clips do bounce off walls
    full = make_clips(64, frames=17, seed=0)["centroids"]    # positions one frame further
    pixel = torch.arange(W).float() + 0.5
    checked = 0
    for o in range(O):
        top = masks[:, o] & ~masks[:, o + 1:].any(1)          # pixels whose flow is object o's
        x = pixel[None, None, None, :] + flow[:, :, 0]
        y = pixel[None, None, :, None] + flow[:, :, 1]
        nx, ny = full[:, o, 1:, 0, None, None], full[:, o, 1:, 1, None, None]
        lands = inside(shape[:, None, None, None], x - nx, y - ny, radius[:, o, None, None, None] + 1e-4)
        assert lands[top].all()
        checked += top.sum().item()
    assert checked > 10_000
    assert (flow.abs().sum(2)[~masks.any(1)] == 0).all()    # background does not move


def test_metrics_separate_real_from_broken_videos():
    clips = make_clips(32, seed=1)
    real = world_metrics(clips["video"], clips["labels"])
    assert real["cleanliness"] > 0.99 and real["label_agreement"] > 0.9 and 1 <= real["objects_per_frame"] <= 3
    noisy = (clips["video"] + 0.3 * torch.randn_like(clips["video"])).clamp(0, 1)
    assert world_metrics(noisy, clips["labels"])["cleanliness"] < 0.5
    wrong = world_metrics(clips["video"], (clips["labels"] + 1) % 18)
    assert wrong["label_agreement"] < 0.1
    assert all(real[f"label_agreement_{shape}"] > 0.9 for shape in SHAPES)
    assert real["fill_triangle"] < 0.65 < real["fill_circle"] < 0.85 < real["fill_square"]
    other_shape = world_metrics(clips["video"], (clips["labels"] + len(COLORS)) % 18)   # same colour, next shape
    assert all(other_shape[f"label_agreement_{shape}"] < 0.1 for shape in SHAPES)
    assert other_shape["fill_square"] < 0.85 and other_shape["fill_circle"] < 0.65   # fills follow what is drawn
    one_object = make_clips(8, seed=3, max_objects=1)
    assert world_metrics(one_object["video"], one_object["labels"])["count_changes"] == 0
    vanishing = one_object["video"].clone()
    vanishing[:, 5] = BACKGROUND[:, None, None]             # the object is gone for one frame: 1 -> 0 -> 1
    assert world_metrics(vanishing, one_object["labels"])["count_changes"] == pytest.approx(2 / 15)
    shuffled = clips["video"][:, torch.randperm(16)]        # same frames, teleporting objects
    assert world_metrics(shuffled, clips["labels"])["track_jitter"] > 2 * real["track_jitter"]
    other = make_clips(32, seed=2)
    same_world = frechet_distance(video_features(clips["video"]), video_features(other["video"]))
    assert same_world < frechet_distance(video_features(clips["video"]), video_features(noisy))
