"""Teacher training: resume equals an uninterrupted run, DDP runs, checkpoints round-trip, errors are clear."""
import os
import subprocess
import sys

import pytest
import torch

import distill
import train
from model import VideoDiT, build_model, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "config", "tiny.py")


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_resume_equals_uninterrupted_training(tmp_path, monkeypatch):
    train.main([TINY, f"--out_dir={tmp_path / 'straight'}"])
    real_save = train.save_checkpoint

    def save_then_crash(state, path):  # the run dies right after its step-2 checkpoint
        real_save(state, path)
        if state["step"] == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.main([TINY, f"--out_dir={tmp_path / 'resumed'}"])
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    train.main([TINY, f"--out_dir={tmp_path / 'resumed'}", "--resume=1"])
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 4 and a["losses"] == b["losses"]
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert not list((tmp_path / "resumed").glob("*.tmp"))  # every temporary file was renamed into place


def test_init_from_starts_at_the_checkpoints_ema_weights(tmp_path):
    """Fine-tuning: with the learning rate at 0 the one step taken must leave the raw and EMA weights at
    the source checkpoint's EMA weights, where a fresh run stays at its random initialisation."""
    train.main([TINY, f"--out_dir={tmp_path / 'source'}"])
    source_path = tmp_path / "source" / "ckpt.pt"
    source = torch.load(source_path, weights_only=False)
    for name, init_from in (("tuned", [f"--init_from={source_path}"]), ("fresh", [])):
        train.main([TINY, *init_from, "--lr=0", "--steps=1", f"--out_dir={tmp_path / name}"])
    tuned, fresh = (torch.load(tmp_path / name / "ckpt.pt", weights_only=False) for name in ("tuned", "fresh"))
    assert tuned["step"] == 1 and len(tuned["losses"]) == 1
    for key in ("model", "ema"):
        assert all(torch.equal(tuned[key][name], source["ema"][name]) for name in source["ema"])
    assert not all(torch.equal(fresh["model"][name], source["ema"][name]) for name in source["ema"])
    with pytest.raises(SystemExit, match="another model config"):
        train.main([TINY, f"--init_from={source_path}", "--width=64", f"--out_dir={tmp_path / 'wide'}"])
    with pytest.raises(SystemExit, match="would overwrite"):
        train.main([TINY, f"--init_from={source_path}", f"--out_dir={tmp_path / 'source'}"])
    # the noise is a training setting: a run onto shared noise may start from a teacher of independent noise
    train.main([TINY, f"--init_from={source_path}", "--noise_correlation=0.5", "--steps=1", f"--out_dir={tmp_path / 'shared'}"])
    assert load_checkpoint(str(tmp_path / "shared" / "ckpt.pt"))[1].noise_correlation == 0.5
    torch.save({**source, "causal": True}, tmp_path / "student.pt")
    for causal in ("0", "1"):  # a distilled student is no start for a teacher, nor for a train.py causal net
        with pytest.raises(SystemExit, match="is a causal net"):
            train.main([TINY, f"--init_from={tmp_path / 'student.pt'}", f"--causal={causal}",
                        f"--out_dir={tmp_path / 'from_student'}"])


class ZeroVelocity(torch.nn.Module):
    """Predicts no motion and keeps what it was given: the sampler then returns its starting noise."""

    def __init__(self, config):
        super().__init__()
        self.config, self.inputs = config, []
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, video, noise_levels, labels, clean_estimate=None):
        self.inputs.append(video.detach().clone())
        return video * self.anchor


def frame_statistics(noise):
    """Variance of the noise and its correlation between consecutive frames, over all clips and pixels."""
    return noise.var().item(), (noise[:, 1:] * noise[:, :-1]).mean().item()


@pytest.mark.parametrize("correlation", [0.0, 0.5])
def test_noise_correlation_is_shared_across_frames_in_training_and_sampling(correlation):
    from model import ModelConfig
    from sample import clip_noise, sample_teacher
    model = ZeroVelocity(ModelConfig(image_size=8, noise_correlation=correlation))
    video, labels = torch.zeros(64, 4, 3, 8, 8), torch.zeros(64, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    train.flow_matching_loss(model, video, labels, train.TrainConfig(), generator, noise_correlation=correlation)
    noisy = model.inputs[0]  # level * noise, as the clips are blank: divide out each clip's level
    _, neighbours = frame_statistics(noisy / noisy.flatten(1).std(1)[:, None, None, None, None])
    assert abs(neighbours - correlation) < 0.05, neighbours
    variance, neighbours = frame_statistics(sample_teacher(model, labels, 4, steps=2, guidance=1.0))
    assert abs(variance - 1) < 0.05 and abs(neighbours - correlation) < 0.05, (variance, neighbours)
    assert torch.equal(clip_noise((2, 4, 3), 0.0, torch.Generator().manual_seed(1)),
                       torch.randn((2, 4, 3), generator=torch.Generator().manual_seed(1)))


def test_short_clips_first_then_full_length(tmp_path, monkeypatch):
    lengths = []
    real_make_clips = train.make_clips

    def recording_make_clips(num, frames, *args, **kwargs):
        lengths.append(frames)
        return real_make_clips(num, frames, *args, **kwargs)
    monkeypatch.setattr(train, "make_clips", recording_make_clips)
    train.main([TINY, "--short_frames=2", "--short_steps=3", f"--out_dir={tmp_path}"])
    assert lengths == [2, 2, 2, 4]
    state, config = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert config.frames == 4 and all(torch.isfinite(torch.tensor(state["losses"])))


def test_motion_weight_charges_flicker_not_a_steady_offset():
    """Two predictions off by the same amount on every frame: one steadily, one flickering. The plain
    loss cannot tell them apart; the motion term charges only the flicker."""
    video = torch.zeros(2, 4, 3, 8, 8)
    steady = torch.full_like(video, 0.1)
    flicker = steady * torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 4, 1, 1, 1)

    def loss(offset, motion_weight):
        def model(noisy, levels, labels, clean_estimate=None):  # the velocity whose clean prediction is video + offset
            return (noisy - video - offset) / levels[:, :, None, None, None]
        labels, generator = torch.zeros(2, dtype=torch.long), torch.Generator().manual_seed(0)
        return train.flow_matching_loss(model, video, labels, train.TrainConfig(), generator, motion_weight).item()

    assert loss(steady, 0.0) == pytest.approx(loss(flicker, 0.0), rel=1e-5)
    assert loss(steady, 1.0) == pytest.approx(loss(steady, 0.0), rel=1e-5)
    assert loss(flicker, 1.0) > 3 * loss(flicker, 0.0)


def test_weight_floor_caps_the_velocity_weight():
    """A clean prediction off by 0.1 everywhere costs 0.01 / max(level, floor)^2, level by level: the
    velocity loss above the floor, and at floor 1 the plain clean-frame error whatever the level."""
    video = torch.zeros(64, 2, 3, 4, 4)
    seen = {}

    def model(noisy, levels, labels, clean_estimate=None):  # the velocity whose clean prediction is video + 0.1
        seen["levels"] = levels[:, 0]
        return (noisy - video - 0.1) / levels[:, :, None, None, None]

    def loss(floor):
        labels, generator = torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(0)
        return train.flow_matching_loss(model, video, labels, train.TrainConfig(), generator, 0.0, floor).item()

    assert loss(1.0) == pytest.approx(0.01, rel=1e-5)
    for floor in (0.05, 0.5):
        value = loss(floor)
        expected = (0.01 / seen["levels"].clamp(min=floor).square()).mean().item()
        assert value == pytest.approx(expected, rel=1e-5)
    assert 0 < (seen["levels"] < 0.5).float().mean() < 1  # the 0.5 floor clamps some levels, not all
    assert loss(0.05) > loss(0.5) > loss(1.0)


def test_frame_level_fraction_gives_that_share_of_clips_a_level_per_frame():
    """Off, every frame of a clip shares its level, drawn exactly as before the option existed (old
    runs reproduce); at 0.25 about a quarter of the clips get a level per frame, the rest keep the
    shared one, and the frames are noised at the levels the model is told."""
    video = torch.zeros(256, 4, 3, 4, 4)
    config, seen = train.TrainConfig(), {}

    def model(noisy, levels, labels, clean_estimate=None):  # an exact clean prediction if `levels` is right
        seen["levels"] = levels
        return noisy / levels[:, :, None, None, None]

    def levels(fraction):
        labels, generator = torch.zeros(256, dtype=torch.long), torch.Generator().manual_seed(0)
        assert train.flow_matching_loss(model, video, labels, config, generator, 0.0, 0.05, fraction).item() < 1e-10
        return seen["levels"]

    shared = levels(0.0)
    generator = torch.Generator().manual_seed(0)
    torch.randn(video.shape, generator=generator)                      # the noise, then one level per clip
    assert torch.equal(shared[:, 0], torch.sigmoid(config.noise_mean + config.noise_std * torch.randn(256, generator=generator)))
    assert torch.equal(shared, shared[:, :1].expand_as(shared))
    mixed = levels(0.25)
    per_frame = (mixed != mixed[:, :1]).any(1)
    assert 0.15 < per_frame.float().mean() < 0.35
    assert torch.equal(mixed[~per_frame], shared[~per_frame])
    config.patch_frames = 2                                            # tubelets: a level per pair of frames
    paired = levels(0.25)
    assert torch.equal(paired[:, 0::2], paired[:, 1::2])
    assert (paired[:, 0] != paired[:, 2]).float().mean() > 0.15


class Recorder(torch.nn.Module):
    """A tiny self-conditioned teacher that keeps every call's inputs and velocity."""

    def __init__(self):
        super().__init__()
        from model import ModelConfig
        torch.manual_seed(0)
        self.net = VideoDiT(ModelConfig(image_size=8, frames=4, width=32, depth=1, heads=2, num_labels=train.NUM_LABELS,
                                        self_condition=True))
        for p in self.net.parameters():
            torch.nn.init.normal_(p, std=0.1)
        self.config, self.calls = self.net.config, []

    def forward(self, video, noise_levels, labels, clean_estimate=None):
        velocity = self.net(video, noise_levels, labels, clean_estimate=clean_estimate)
        self.calls.append(dict(video=video, levels=noise_levels, estimate=clean_estimate, velocity=velocity))
        return velocity


def test_self_conditioning_reads_the_nets_own_estimate_in_training_and_sampling():
    """Training: a first pass without gradient estimates the clean clip for some of the clips, the
    second pass reads it (zeros for the rest) and trains the weights that read it. Sampling and the ODE
    pairs of distillation: each step reads the clean estimate the step before implied, the first step none
    (and no step, with the sampler's second look switched off)."""
    model, video = Recorder(), torch.randn(8, 4, 3, 8, 8)
    labels, generator = torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(0)
    loss = train.flow_matching_loss(model, video, labels, train.TrainConfig(), generator, self_condition=True)
    first, second = model.calls
    looked = second["estimate"].flatten(1).abs().sum(1) > 0
    assert 0 < looked.sum() < 8 and len(first["video"]) == looked.sum() and not first["velocity"].requires_grad
    noisy, levels = second["video"][looked], second["levels"][looked][:, :, None, None, None]
    assert torch.allclose(second["estimate"][looked], noisy - levels * first["velocity"])
    loss.backward()
    assert model.net.patch_in.weight.grad[:, model.net.patch_numbers:].abs().sum() > 0

    from sample import sample_teacher
    for sampler in (lambda: sample_teacher(model, labels[:2], 4, steps=3, guidance=1.0),   # samples and ODE pairs
                    lambda: distill.teacher_trajectories(model, labels[:2], 4, {0.5}, 3, 1.0, 1.0, seed=0)):
        model.calls.clear()
        sampler()
        assert model.calls[0]["estimate"] is None and len(model.calls) >= 3
        for before, after in zip(model.calls[:-1], model.calls[1:]):
            level = before["levels"][:, :, None, None, None]
            assert torch.allclose(after["estimate"], before["video"] - level * before["velocity"])
    model.calls.clear()
    sample_teacher(model, labels[:2], 4, steps=3, guidance=1.0, second_look=False)  # the net without its second look
    assert len(model.calls) == 3 and all(call["estimate"] is None for call in model.calls)


def test_self_conditioning_starts_as_the_teacher_it_widens(tmp_path):
    """--init_from a plain teacher with --self_condition=1: the estimate's input weights start at zero,
    so the widened net draws what its teacher drew whatever estimate it reads; a self-conditioned net
    cannot be narrowed back."""
    train.main([TINY, f"--out_dir={tmp_path / 'plain'}"])
    train.main([TINY, f"--init_from={tmp_path / 'plain' / 'ckpt.pt'}", "--self_condition=1", "--lr=0", "--steps=1",
                f"--out_dir={tmp_path / 'widened'}"])
    plain, widened = (build_model(*load_checkpoint(str(tmp_path / name / "ckpt.pt"))) for name in ("plain", "widened"))
    assert widened.config.self_condition and not plain.config.self_condition
    video, levels, labels = torch.randn(2, 4, 3, 16, 16), torch.full((2, 4), 0.7), torch.tensor([1, 2])
    expected = plain(video, levels, labels)
    for estimate in (None, torch.randn_like(video)):
        assert torch.allclose(widened(video, levels, labels, clean_estimate=estimate), expected, atol=1e-5)
    with pytest.raises(SystemExit, match="self-conditioned"):
        train.main([TINY, f"--init_from={tmp_path / 'widened' / 'ckpt.pt'}", f"--out_dir={tmp_path / 'narrowed'}"])


def test_checkpoint_round_trip(tmp_path):
    train.main([TINY, f"--out_dir={tmp_path}"])
    state, config = load_checkpoint(str(tmp_path / "ckpt.pt"))
    model = build_model(state, config)
    assert config.width == 32 and config.image_size == 16
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["ema"][name])
    video = torch.randn(1, 4, 3, 16, 16)
    reloaded = build_model(*load_checkpoint(str(tmp_path / "ckpt.pt")))
    args = (video, torch.full((1, 4), 0.5), torch.tensor([1]))
    assert torch.equal(model(*args), reloaded(*args))
    assert (tmp_path / "loss.png").exists() and list(tmp_path.glob("samples_*.gif"))


def test_bf16_autocast_only_on_cpus_with_bf16_units(tmp_path, monkeypatch, capsys):
    # without bf16 units the CPU emulates bf16, about 10x slower than float32, so training must not use it
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    for has_units, expected in ((False, "float32"), (True, "bf16 autocast")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has_units)
        train.main([TINY, "--bf16=1", "--steps=1", f"--out_dir={tmp_path / str(has_units)}"])
        assert f"{expected}, from step 0" in capsys.readouterr().out


@pytest.mark.parametrize("options", [[], ["--self_condition=1"]])  # its extra pass differs in size between ranks
def test_ddp_two_cpu_processes(tmp_path, options):
    result = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "train.py", TINY, *options,
                             f"--out_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    state, _ = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert state["step"] == 4 and all(torch.isfinite(torch.tensor(state["losses"])))


def test_clear_errors(tmp_path):
    missing = run_cli("sample.py", "--ckpt", str(tmp_path / "nope.pt"))
    assert missing.returncode != 0 and "no checkpoint at" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    train.main([TINY, f"--out_dir={tmp_path}"])
    other = run_cli("train.py", TINY, f"--out_dir={tmp_path}", "--resume=1", "--width=64")
    assert other.returncode != 0 and "another model config" in other.stderr.strip().splitlines()[-1]
    unknown = run_cli("train.py", TINY, "--widht=64")
    assert unknown.returncode != 0 and "unknown setting 'widht'" in unknown.stderr
    wrong_type = run_cli("train.py", TINY, "--steps=many")
    assert wrong_type.returncode != 0 and "steps must be int" in wrong_type.stderr
    no_short_length = run_cli("train.py", TINY, "--short_steps=2")
    assert no_short_length.returncode != 0 and "needs short_frames" in no_short_length.stderr
    not_a_fraction = run_cli("train.py", TINY, "--frame_level_fraction=2")
    assert not_a_fraction.returncode != 0 and "from 0 to 1" in not_a_fraction.stderr
    all_shared = run_cli("train.py", TINY, "--noise_correlation=1")
    assert all_shared.returncode != 0 and "share of variance" in all_shared.stderr
    not_a_level = run_cli("train.py", TINY, "--min_level=1")
    assert not_a_level.returncode != 0 and "min_level=1.0 is a noise level" in not_a_level.stderr
    no_base = run_cli("train.py", TINY, "--min_level=0.5")
    assert no_base.returncode != 0 and "give that teacher as --init_from" in no_base.stderr
    no_preset = run_cli("train.py", "config/nope.py")
    assert no_preset.returncode != 0 and "no preset file" in no_preset.stderr


def test_sample_cli_writes_gif_and_npz(tmp_path):
    train.main([TINY, f"--out_dir={tmp_path}"])
    result = run_cli("sample.py", "--ckpt", str(tmp_path / "ckpt.pt"), "--num", "2", "--steps", "3",
                     "--label", "blue square", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    data = __import__("numpy").load(tmp_path / "out" / "stream.npz")
    assert data["frames"].shape == (2, 4, 16, 16, 3) and data["frames"].dtype.name == "uint8"
    assert data["labels"].tolist() == [8, 8]
    assert (tmp_path / "out" / "stream.gif").exists()
    bad_label = run_cli("sample.py", "--ckpt", str(tmp_path / "ckpt.pt"), "--label", "purple blob")
    assert bad_label.returncode != 0 and "unknown label" in bad_label.stderr


def test_exported_weights_are_small_and_sample_the_same(tmp_path):
    from model import export_weights
    train.main([TINY, f"--out_dir={tmp_path}"])
    export_weights(str(tmp_path / "ckpt.pt"), str(tmp_path / "small.pt"))
    assert os.path.getsize(tmp_path / "small.pt") < os.path.getsize(tmp_path / "ckpt.pt") / 2
    full, small = (build_model(*load_checkpoint(str(tmp_path / name))) for name in ("ckpt.pt", "small.pt"))
    args = (torch.randn(1, 4, 3, 16, 16), torch.full((1, 4), 0.7), torch.tensor([2]))
    assert torch.equal(full(*args), small(*args))


def test_high_noise_expert_trains_on_its_levels_and_takes_them_over(tmp_path, monkeypatch):
    from model import LevelExperts, export_weights
    seen = {}

    def record(noisy, levels, labels, clean_estimate=None):
        seen["levels"] = levels
        return noisy
    generator = torch.Generator().manual_seed(0)
    train.flow_matching_loss(record, torch.zeros(256, 4, 3, 4, 4), torch.zeros(256, dtype=torch.long),
                             train.TrainConfig(), generator, min_level=0.6)
    assert seen["levels"].min() >= 0.6 and seen["levels"].max() > 0.95
    assert seen["levels"].mean() == pytest.approx(0.8, abs=0.02)

    train.main([TINY, f"--out_dir={tmp_path / 'base'}"])
    base = str(tmp_path / "base" / "ckpt.pt")
    with pytest.raises(SystemExit, match="no high-noise expert"):
        export_weights(base, str(tmp_path / "teacher.pt"), base)
    min_levels, real_loss = [], train.flow_matching_loss
    monkeypatch.setattr(train, "flow_matching_loss", lambda *args, **kwargs: min_levels.append(kwargs["min_level"])
                        or real_loss(*args, **kwargs))
    train.main([TINY, f"--out_dir={tmp_path / 'expert'}", f"--init_from={base}", "--min_level=0.5", "--seed=1"])
    assert min_levels == [0.5] * 4                                      # every step of the run trains the expert
    expert = str(tmp_path / "expert" / "ckpt.pt")
    with pytest.raises(SystemExit, match="no all-levels teacher"):  # the two checkpoints swapped
        export_weights(expert, str(tmp_path / "teacher.pt"), base)
    export_weights(base, str(tmp_path / "teacher.pt"), expert)
    teacher = build_model(*load_checkpoint(str(tmp_path / "teacher.pt")))
    assert isinstance(teacher, LevelExperts) and teacher.boundary == 0.5
    low, high = (build_model(*load_checkpoint(str(tmp_path / name / "ckpt.pt"))) for name in ("base", "expert"))
    video, labels = torch.randn(3, 4, 3, 16, 16), torch.tensor([1, 2, 3])
    levels = torch.tensor([0.9, 0.3, 0.5])[:, None].expand(3, 4)  # a clip at the boundary itself stays low
    expected = torch.cat([high(video[:1], levels[:1], labels[:1]), low(video[1:], levels[1:], labels[1:])])
    assert torch.allclose(teacher(video, levels, labels), expected, atol=1e-6)
    first_clip = (video[:1], levels[:1], labels[:1])
    assert not torch.allclose(high(*first_clip), low(*first_clip), atol=1e-4)


def test_shipped_teacher_loads_and_draws_the_toy_world():
    from data import cleanliness
    from sample import sample_teacher
    state, config = load_checkpoint(os.path.join(ROOT, "assets", "teacher.pt"))
    assert config.image_size == 32 and config.frames == 16 and not state["causal"]
    # the shipped teacher is what its preset makes: a changed config/ship.py must ship a new teacher
    preset = train.parse_config(train.TrainConfig(), [os.path.join(ROOT, "config", "ship.py")])
    assert config == train.model_config(preset)
    assert os.path.getsize(os.path.join(ROOT, "assets", "teacher.pt")) < 10 * 2 ** 20
    video = sample_teacher(build_model(state, config), torch.tensor([0, 7]), frames=4, steps=20, seed=0)
    assert cleanliness(((video + 1) / 2).clamp(0, 1)) > 0.8   # pure noise scores about 0.3


@pytest.mark.parametrize("preset", sorted(os.listdir(os.path.join(ROOT, "config"))))
def test_every_preset_parses_and_builds_its_model(preset):
    # a typo or a wrongly typed value in a preset fails here, not an hour into someone's run
    path = os.path.join(ROOT, "config", preset)
    if "distill" in preset:
        config = train.parse_config(distill.DistillConfig(), [path])
        assert config.dmd_steps > 0 and config.lr > 0
    else:
        config = train.parse_config(train.TrainConfig(), [path])
        assert 0 < config.warmup < config.steps and config.lr > 0
        VideoDiT(train.model_config(config))


def test_stacked_presets_later_file_wins():
    # the shipped student's preset is config/distill_ship.py stacked on config/distill_cpu.py
    learner, ship = (os.path.join(ROOT, "config", name) for name in ("distill_cpu.py", "distill_ship.py"))
    alone = {path: train.parse_config(distill.DistillConfig(), [path]) for path in (learner, ship)}
    stacked = train.parse_config(distill.DistillConfig(), [learner, ship])
    assert stacked.dmd_steps == alone[ship].dmd_steps != alone[learner].dmd_steps
    assert stacked.noise_mean == alone[learner].noise_mean != distill.DistillConfig().noise_mean
