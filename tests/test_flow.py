"""Motion: frame differences, losses whose gradients match their formulas, an accurate and differentiable
flow estimator, and motion metrics that tell real motion from frozen, slowed and shuffled videos."""
import torch

from data import make_clips
from flow import (amplitude_ratio, dmd_loss, endpoint_error, estimate_flow, flow_dmd_loss, frame_differences,
                  motion_metrics, pair_weights)


def test_frame_differences_by_hand():
    video = torch.tensor([[0., 1., 3., 6.], [5., 5., 4., 0.]]).view(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2)
    diff = frame_differences(video)
    assert diff.shape == (2, 3, 3, 2, 2)
    assert torch.equal(diff[:, :, 0, 0, 0], torch.tensor([[1., 2., 3.], [0., -1., -4.]]))
    assert torch.equal(diff[:, :, 2, 1, 1], diff[:, :, 0, 0, 0])


def per_sample_mean(x):
    return x.abs().mean(dim=(1, 2, 3, 4), keepdim=True)


def test_dmd_loss_gradient_is_g_over_numel():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 3, 8, 8, requires_grad=True)
    fake, real = torch.randn(3, 4, 3, 8, 8), torch.randn(3, 4, 3, 8, 8)
    loss = dmd_loss(x, fake, real)
    loss.backward()
    g = (fake - real) / per_sample_mean(x.detach() - real)
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, g / x.numel())
    torch.testing.assert_close(loss, 0.5 * g.square().mean())


def test_flow_dmd_loss_gradient_goes_back_through_the_difference_operator():
    torch.manual_seed(1)
    B, Fr = 2, 5
    x = torch.randn(B, Fr, 3, 6, 6, requires_grad=True)
    fake, real = torch.randn(B, Fr, 3, 6, 6), torch.randn(B, Fr, 3, 6, 6)
    flow_dmd_loss(x, fake, real).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # two releases shipped this term without any gradient

    # by hand: D y_f = y_{f+1} - y_f, g = (D fake - D real) / mean|D x - D real| per sample,
    # d loss / d (D x)_f = w_f g_f / numel(D x), and d loss / d x = D^T of that: (D^T u)_k = u_{k-1} - u_k
    dx, dfake, dreal = (v[:, 1:] - v[:, :-1] for v in (x.detach(), fake, real))
    weights = pair_weights(Fr - 1)
    assert (weights.diff() > 0).all() and abs(weights.mean().item() - 1) < 1e-6
    u = weights.view(1, -1, 1, 1, 1) * (dfake - dreal) / per_sample_mean(dx - dreal) / dx.numel()
    expected = torch.zeros_like(x)
    expected[:, 1:] += u
    expected[:, :-1] -= u
    torch.testing.assert_close(x.grad, expected)


def test_flow_dmd_loss_with_estimated_flow_has_a_gradient():
    clips = make_clips(2, frames=6, seed=2)["video"] * 2 - 1
    x = (clips + 0.1 * torch.randn_like(clips)).requires_grad_()
    shifted = torch.cat([clips[:, :1], clips[:, :-1]], 1)  # a "critic" whose clip lags one frame behind
    flow_dmd_loss(x, shifted, clips, flow_repr="flow").backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_estimated_flow_is_accurate_on_object_pixels():
    clips = make_clips(128, seed=1)
    with torch.no_grad():
        estimated = estimate_flow(clips["video"])
    assert estimated.shape == (128, 15, 2, 32, 32)
    assert endpoint_error(estimated, clips) < 0.5                    # zero flow would be off by ~2 px
    assert endpoint_error(estimated.flip(2), clips) > 1.0            # (dx, dy) in data.py's order


def test_estimated_flow_is_differentiable_and_its_gradient_is_right():
    video = make_clips(2, frames=4, seed=3)["video"].double().requires_grad_()
    flow = estimate_flow(video)
    weights = torch.randn(flow.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (flow * weights).sum().backward()
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0
    # a directional derivative agrees (the argmin and the clamps do not switch within such a small step)
    direction = torch.randn(video.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    step = 1e-6
    with torch.no_grad():
        numeric = ((estimate_flow(video + step * direction) - estimate_flow(video - step * direction)) * weights).sum() / (2 * step)
    assert abs(numeric.item() - (video.grad * direction).sum().item()) < 1e-4 * max(1.0, abs(numeric.item()))


def test_motion_metrics_tell_real_from_frozen_slowed_and_shuffled():
    clips = make_clips(16, seed=4)
    video, pairs = clips["video"], clips["video"].shape[1] - 1
    real = motion_metrics(video)
    exact = clips["flow"][:, :pairs].norm(dim=2)[clips["masks"].any(1)[:, :pairs]].mean().item()
    assert 1.0 < real["amplitude"] < 3.0 and abs(real["amplitude"] / exact - 1) < 0.1 and real["coherence"] < 1.0
    frozen = motion_metrics(video[:, :1].expand_as(video))
    assert frozen["amplitude"] < 0.1
    slowed = video.repeat_interleave(2, dim=1)[:, :video.shape[1]]  # every frame twice: half the speed
    assert abs(amplitude_ratio(slowed, video) - 0.5) < 0.1
    shuffled = video[:, torch.randperm(video.shape[1], generator=torch.Generator().manual_seed(0))]
    assert motion_metrics(shuffled)["coherence"] > 3 * real["coherence"]
