"""The causal sampler: fused equals sequential, training rollouts, bounded streaming, capture safety."""
import dataclasses
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model import ModelConfig, VideoDiT
from sample import (NoiseSource, fresh_noise_step, fused_chunks, guided_velocity, rollout, rollout_chunks, sample_teacher,
                    stream)
from schedule import diagonal, make_plan, paper, uniform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = ModelConfig(image_size=16, patch_size=4, frames=8, chunk_frames=2, width=32, depth=2, heads=2,
                     num_labels=4, window_chunks=3, sink_chunks=1)


def student(seed=0, config=CONFIG):
    torch.manual_seed(seed)
    model = VideoDiT(config, causal=True)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


LABELS = torch.tensor([1, 2])
PLANS = {"uniform": uniform(6), "diagonal": diagonal(6), "paper": paper(6),
         "custom": make_plan(6, first_steps=3, fall=2, floor=1, grid=(1.0, 0.6), final=0.2)}


@pytest.mark.parametrize("context", ["last", "clean", "renoise"])
@pytest.mark.parametrize("plan_name", list(PLANS))
def test_fused_sampler_equals_sequential_rollout(plan_name, context):
    plan = PLANS[plan_name]
    if context == "last" and any(len(levels) < 2 for levels in plan[1:]):
        pytest.skip("one-step chunks cannot be fused under 'last' (fused_chunks says so)")
    model = student()
    noise = NoiseSource(seed=3, batch_size=2, config=CONFIG, device="cpu")
    with torch.no_grad():
        sequential = rollout(model, plan, context, LABELS, noise)
    fused = torch.cat(list(fused_chunks(model, plan, context, LABELS, noise)), 1)
    assert sequential.shape == fused.shape == (2, 12, 3, 16, 16)   # 6 chunks: past the window of 3 + sink
    assert (sequential - fused).abs().max() < 1e-5


@pytest.mark.parametrize("context", ["last", "clean", "renoise"])
def test_fused_sampler_streams_a_single_chunk(context):
    # under 'last' chunk 0 finishes alone, so a one-chunk stream leaves no pending pass for the end
    plan = PLANS["diagonal"][:1]
    model = student()
    noise = NoiseSource(seed=3, batch_size=2, config=CONFIG, device="cpu")
    with torch.no_grad():
        sequential = rollout(model, plan, context, LABELS, noise)
    fused = torch.cat(list(fused_chunks(model, plan, context, LABELS, noise)), 1)
    assert sequential.shape == fused.shape == (2, 2, 3, 16, 16)
    assert (sequential - fused).abs().max() < 1e-5


def test_fused_sampler_equals_sequential_rollout_with_tubelets():
    config = dataclasses.replace(CONFIG, patch_frames=2)  # one token frame a chunk
    model = student(config=config)
    noise = NoiseSource(seed=3, batch_size=2, config=config, device="cpu")
    with torch.no_grad():
        sequential = rollout(model, PLANS["diagonal"], "last", LABELS, noise)
    fused = torch.cat(list(fused_chunks(model, PLANS["diagonal"], "last", LABELS, noise)), 1)
    assert (sequential - fused).abs().max() < 1e-5


def test_fused_rejects_one_step_chunks_with_last():
    plan = make_plan(3, first_steps=1, floor=1)
    with pytest.raises(ValueError, match="sequential"):
        list(fused_chunks(student(), plan, "last", LABELS, NoiseSource(0, 2, CONFIG, "cpu")))


def test_context_rules_change_what_later_chunks_see():
    model = student()
    noise = NoiseSource(seed=1, batch_size=2, config=CONFIG, device="cpu")
    with torch.no_grad():
        videos = {rule: rollout(model, diagonal(3), rule, LABELS, noise) for rule in ("last", "clean", "renoise")}
    for rule in videos:  # chunk 0 never depends on context; chunk 1 does
        assert torch.allclose(videos[rule][:, :2], videos["last"][:, :2], atol=1e-6)
    assert (videos["clean"][:, 2:] - videos["last"][:, 2:]).abs().max() > 1e-3
    assert (videos["renoise"][:, 2:] - videos["clean"][:, 2:]).abs().max() > 1e-3


def test_exit_steps_carry_the_gradient_and_full_exit_matches_inference():
    model = student()
    noise = NoiseSource(seed=2, batch_size=2, config=CONFIG, device="cpu")
    plan = diagonal(4)
    with torch.no_grad():
        inference = rollout(model, plan, "last", LABELS, noise)
    model.requires_grad_(True)
    last_steps = [len(levels) - 1 for levels in plan]
    trained = rollout(model, plan, "last", LABELS, noise, exit_steps=last_steps)
    assert (trained - inference).abs().max() < 1e-5          # same video as inference when exiting last
    trained.square().mean().backward()
    assert model.patch_in.weight.grad.abs().sum() > 0
    model.zero_grad()
    early = rollout(model, plan, "last", LABELS, noise, exit_steps=[0, 1, 0, 1])
    assert early.requires_grad
    # only the exit step is differentiable: a gradient through chunk 3 alone reaches the weights
    early[:, 6:].sum().backward()
    assert model.patch_in.weight.grad.abs().sum() > 0


def test_noise_is_addressed_not_consumed():
    noise = NoiseSource(seed=5, batch_size=2, config=CONFIG, device="cpu")
    a = noise(3, 1)
    noise(0, 0), noise(7, 2)
    assert torch.equal(noise(3, 1), a) and not torch.equal(noise(3, 2), a)


def test_streaming_ten_times_the_training_length_keeps_the_cache_bounded(monkeypatch):
    import sample
    model = student()
    frames = 10 * CONFIG.frames
    caches = set()
    original = sample.StreamingStep.__call__

    def spy(self, video, levels, offset):
        caches.add((self.kv_cache.keys.shape, self.kv_cache.keys.data_ptr()))
        return original(self, video, levels, offset)
    monkeypatch.setattr(sample.StreamingStep, "__call__", spy)
    seen = 0
    for chunk in stream(model, LABELS, frames, "diagonal", "last", "fused", seed=0):
        assert torch.isfinite(chunk).all()
        seen += chunk.shape[1]
    assert seen == frames and len(caches) == 1   # one buffer, never reallocated or grown


def test_stream_cuts_to_any_length():
    model = student()
    chunks = list(stream(model, LABELS, 7, "diagonal", "last", "sequential"))
    assert [c.shape[1] for c in chunks] == [2, 2, 2, 1]


class OpRecorder(TorchDispatchMode):
    """Records every aten op the step dispatches, with its output shapes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = tuple(tuple(o.shape) for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor))
        self.calls.append((str(func), shapes))
        return out


HOST_SYNCS = ("_local_scalar_dense", "aten.item", "nonzero", "masked_select", "unique", "repeat_interleave.Tensor",
              "aten.is_nonzero", "aten.equal", "resize_", "set_.")


def test_fused_step_is_capture_safe():
    """What a CUDA graph would record: the fused two-chunk pass with a tensor offset on static buffers.
    No host syncs or data-dependent shapes, the same ops and shapes at every offset, no reallocation."""
    model = student()
    cache = model.new_cache(2)
    pointers = (cache.keys.data_ptr(), cache.values.data_ptr(), cache.slot_chunk.data_ptr())
    video = torch.randn(2, 4, 3, 16, 16)
    levels = torch.full((2, 4), 0.5)
    traces = []
    with torch.no_grad():
        for offset in (0, 2, 12, 30):      # before and after the ring wraps
            with OpRecorder() as recorder:
                model(video, levels, LABELS, torch.tensor(offset), cache)
            traces.append(recorder.calls)
    names = {name for name, _ in traces[0]}
    bad = [name for name in names if any(sync in name for sync in HOST_SYNCS)]
    assert not bad, f"host synchronisation or dynamic shapes in the step: {bad}"
    assert all(trace == traces[0] for trace in traces), "ops or shapes depend on the offset"
    assert (cache.keys.data_ptr(), cache.values.data_ptr(), cache.slot_chunk.data_ptr()) == pointers
    # and the recorder does catch a host sync when there is one
    with OpRecorder() as recorder:
        torch.tensor([1.0]).item()
    assert any("_local_scalar_dense" in name for name, _ in recorder.calls)


class LabelEcho(torch.nn.Module):
    """A stand-in network whose velocity is its label, so guided and unguided outputs are known exactly."""
    config = CONFIG

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, video, noise_levels, labels, clean_estimate=None):
        self.batch_sizes.append(len(labels))
        return torch.zeros_like(video) + labels[:, None, None, None, None].float()


def test_guidance_applies_only_up_to_the_cutoff():
    model, video, labels = LabelEcho(), torch.zeros(1, 3, 3, 16, 16), torch.tensor([1])
    levels = torch.tensor([[0.2, 0.7, 0.9]])
    guided = CONFIG.num_labels + 2.0 * (1 - CONFIG.num_labels)  # v_uncond + 2 (v_cond - v_uncond): label 1, null 4
    v = guided_velocity(model, video, levels, labels, 2.0, cutoff=0.7)
    assert v[0, :, 0, 0, 0].tolist() == [guided, guided, 1.0]  # frames above the cutoff get v_cond alone
    assert (guided_velocity(model, video, levels, labels, 2.0, cutoff=1.0) == guided).all()
    model.batch_sizes.clear()
    v = guided_velocity(model, video, torch.full((1, 3), 0.9), labels, 2.0, cutoff=0.7)
    assert (v == 1.0).all() and model.batch_sizes == [1]  # no unconditional half when no frame is guided


def test_teacher_sampler_runs_and_is_seeded():
    torch.manual_seed(0)
    teacher = VideoDiT(CONFIG, causal=False).eval()
    a = sample_teacher(teacher, LABELS, 4, steps=3, seed=1)
    b = sample_teacher(teacher, LABELS, 4, steps=3, seed=1)
    assert torch.equal(a, b) and a.shape == (2, 4, 3, 16, 16)


class GaussianDenoiser(torch.nn.Module):
    """The exact velocity for data whose every pixel is N(0, data_std^2): its posterior mean is linear."""

    def __init__(self, config, data_std):
        super().__init__()
        self.config, self.data_std = config, data_std
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # sample_teacher reads the device off a parameter

    def forward(self, video, noise_levels, labels, clean_estimate=None):
        s, var = noise_levels[:, :, None, None, None], self.data_std ** 2
        clean = (1 - s) * var / ((1 - s) ** 2 * var + s ** 2) * video
        return (video - clean) / s


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_fresh_noise_sampler_reaches_the_data_distribution(eta):
    # With the exact denoiser of Gaussian data, the ODE (eta 0), DDPM's ancestral steps (eta 1) and
    # anything between must all end at the data's spread once the steps are small. A sampler that
    # replaced a fixed share of the noise every step instead ends several percent narrow (at eta 1,
    # far narrower).
    model = GaussianDenoiser(CONFIG, data_std=0.5)
    video = sample_teacher(model, torch.zeros(64, dtype=torch.long), 4, steps=1000, guidance=1.0, seed=2, eta=eta)
    assert abs(video.std().item() - 0.5) < 0.005, video.std().item()


def test_fresh_noise_step_at_eta_1_is_the_posterior_step():
    # DDPM's ancestral step for x_s = (1 - s) clean + s noise, from level s down to t: forward,
    # x_s = a x_t + fresh noise with a = (1 - s) / (1 - t), so x_s's unit noise and x_t's are jointly
    # Gaussian with correlation a t / s: given x_s's, x_t's noise has mean correlation * x_s's noise and
    # variance 1 - correlation^2
    s, t = 0.6, 0.4
    clean, noise = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))
    x, v = (1 - s) * clean + s * noise, noise - clean
    correlation = (1 - s) / (1 - t) * t / s
    mean = (1 - t) * clean + t * correlation * noise
    spread = t * (1 - correlation ** 2) ** 0.5
    without_fresh = fresh_noise_step(x, v, s, t, 1.0, torch.zeros_like(x))
    assert torch.allclose(without_fresh, mean, atol=1e-6)
    assert torch.allclose(fresh_noise_step(x, v, s, t, 1.0, torch.ones_like(x)) - without_fresh,
                          torch.full_like(x, spread), atol=1e-6)
    assert torch.allclose(fresh_noise_step(x, v, s, t, 0.0, torch.ones_like(x)), x + (t - s) * v, atol=1e-6)  # Euler


def test_fresh_noise_sampler_at_eta_near_0_is_the_euler_sampler():
    # eta 0 takes the Euler branch itself; a tiny eta goes through fresh_noise_step and must agree
    teacher = student()  # random weights: a fresh VideoDiT's zero-initialised output gives v = 0 and tests nothing
    teacher.causal = False
    euler = sample_teacher(teacher, LABELS, 4, steps=3, seed=1)
    assert torch.allclose(sample_teacher(teacher, LABELS, 4, steps=3, seed=1, eta=1e-9), euler, atol=1e-5)
    assert not torch.allclose(sample_teacher(teacher, LABELS, 4, steps=3, seed=1, eta=0.5), euler, atol=1e-3)


class Still(torch.nn.Module):
    """A velocity of zero everywhere: every step leaves the sample where it is."""

    def __init__(self):
        super().__init__()
        self.config = CONFIG
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # sample_teacher reads the device off a parameter

    def forward(self, video, noise_levels, labels, clean_estimate=None):
        return torch.zeros_like(video)


def test_teacher_started_from_noised_clips_runs_only_the_steps_below_the_start():
    teacher = student()
    teacher.causal = False
    clips = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    assert torch.equal(sample_teacher(teacher, LABELS, 4, steps=4, seed=1, start=clips, start_level=0.0), clips)
    assert torch.equal(sample_teacher(teacher, LABELS, 4, steps=4, seed=1, start=clips, start_level=1.0),
                       sample_teacher(teacher, LABELS, 4, steps=4, seed=1))
    seen = []
    teacher.register_forward_hook(lambda module, args, out: seen.append(args[1][0, 0].item()))
    sample_teacher(teacher, LABELS, 4, steps=4, guidance=1.0, seed=1, start=clips, start_level=0.6)
    assert seen == pytest.approx([0.6, 0.5, 0.25])
    seen.clear()  # a grid level equal to the start level up to rounding (1 - 40/50 < 0.2) is no extra step
    sample_teacher(teacher, LABELS, 4, steps=50, guidance=1.0, seed=1, start=clips, start_level=0.2)
    assert len(seen) == 10 and seen[0] == pytest.approx(0.2)
    # with no velocity the sampler stops where it starts: the clips mixed with the seed's noise at the level
    still = Still()
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(sample_teacher(still, LABELS, 4, steps=4, guidance=1.0, seed=1, start=clips, start_level=0.6),
                          0.4 * clips + 0.6 * noise, atol=1e-6)


def test_eta_outside_0_to_1_is_rejected():
    import evaluate
    import sample
    for main in (sample.main, evaluate.main):
        with pytest.raises(SystemExit, match="--eta must be between 0"):
            main(["--ckpt", os.path.join(ROOT, "assets", "teacher.pt"), "--eta", "1.5"])
    with pytest.raises(SystemExit, match="--start_level must be between 0"):
        evaluate.main(["--ckpt", os.path.join(ROOT, "assets", "teacher.pt"), "--start_level", "-0.2"])
    with pytest.raises(ValueError, match="eta must be between 0"):
        sample_teacher(GaussianDenoiser(CONFIG, data_std=0.5), LABELS, 4, steps=2, eta=-0.1)


def test_student_cli_fused_and_sequential_write_the_same_stream(tmp_path):
    import subprocess
    import sys
    from dataclasses import asdict

    import numpy as np

    from model import save_checkpoint
    model = student()
    weights = model.state_dict()
    save_checkpoint(dict(model_config=asdict(CONFIG), causal=True, model=weights, ema=weights), str(tmp_path / "s.pt"))
    outs = {}
    for sampler in ("fused", "sequential"):
        result = subprocess.run([sys.executable, "sample.py", "--ckpt", str(tmp_path / "s.pt"), "--num", "2",
                                 "--frames", "11", "--label", "2", "--sampler", sampler, "--out", str(tmp_path / sampler)],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert "first frame after" in result.stdout and "frames/s" in result.stdout
        outs[sampler] = np.load(tmp_path / sampler / "stream.npz")["frames"]
    assert outs["fused"].shape == (2, 11, 16, 16, 3)
    assert np.abs(outs["fused"].astype(int) - outs["sequential"].astype(int)).max() <= 1  # uint8 rounding
    bad = subprocess.run([sys.executable, "sample.py", "--ckpt", str(tmp_path / "s.pt"), "--plan", "zigzag"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "unknown plan" in bad.stderr


def test_bench_prints_a_table_and_a_json_last_line(capsys):
    import json

    import bench
    bench.main(["--random", "--preset", os.path.join(ROOT, "config", "tiny.py"), "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert {"latency_speedup_vs_teacher", "total_speedup_vs_self_forcing", "student_fps", "sampler_overhead"} <= set(result)
    table = {line.split()[0]: line.split() for line in lines if line.startswith(("teacher", "self-forcing"))}
    assert table["teacher"][1:3] == ["100", "50"] and table["self-forcing"][1:3] == ["10", "10"]  # 2 chunks


TINY, SHIPPED_TEACHER = os.path.join(ROOT, "config", "tiny.py"), os.path.join(ROOT, "assets", "teacher.pt")


@pytest.mark.parametrize("argv, message", [(["--random", "--preset", TINY, "--repeats", "0"], "at least 1"),
                                          (["--random", "--preset", TINY, "--frames", "3"], "multiple of the chunk"),
                                          (["--random", "--ckpt", SHIPPED_TEACHER], "either --random or --ckpt"),
                                          (["--ckpt", SHIPPED_TEACHER, "--preset", TINY], "brings its own size")])
def test_bench_rejects_what_it_cannot_measure(argv, message):
    import bench
    with pytest.raises(SystemExit, match=message):
        bench.main(argv)
