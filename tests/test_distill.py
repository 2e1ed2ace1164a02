"""Distillation: resume equals an uninterrupted run (across the stage boundary), DDP runs, the teacher's
kept states lie on its ODE path, the alignment switch changes what training conditions on, clear errors."""
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
TINY_DISTILL = os.path.join(ROOT, "config", "tiny_distill.py")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train.main([TINY, f"--out_dir={out}"])
    return str(out / "ckpt.pt")


def tiny_args(teacher, out, *extra):
    return [TINY_DISTILL, f"--teacher={teacher}", f"--out_dir={out}", f"--pairs_path={out / 'pairs.pt'}", *extra]


def test_resume_equals_uninterrupted_distillation(teacher, tmp_path, monkeypatch):
    distill.main(tiny_args(teacher, tmp_path / "straight"))
    real_save = distill.save_checkpoint

    def save_then_crash(state, path):  # dies right after the step-2 checkpoint: the end of stage 1
        real_save(state, path)
        if state.get("step") == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(distill, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        distill.main(tiny_args(teacher, tmp_path / "resumed"))
    monkeypatch.setattr(distill, "save_checkpoint", real_save)
    distill.main(tiny_args(teacher, tmp_path / "resumed", "--resume=1"))
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 4 and a["losses"] == b["losses"]
    assert len(a["losses"]["ode"]) == 2 and len(a["losses"]["dmd"]) == 2
    for key in ("student", "ema", "critic"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    # the student moved away from the teacher it started as, and it is a causal model that sample.py streams
    teacher_weights = torch.load(teacher, weights_only=False)["ema"]
    assert any(not torch.equal(a["student"][n], teacher_weights[n]) for n in teacher_weights)
    assert a["causal"] is True and (tmp_path / "straight" / "loss.png").exists()


def test_resume_takes_new_learning_rates(teacher, tmp_path):
    distill.main(tiny_args(teacher, tmp_path, "--dmd_steps=1"))
    distill.main(tiny_args(teacher, tmp_path, "--resume=1", "--lr=3e-6", "--critic_lr=7e-6"))
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert state["step"] == 4
    assert [g["lr"] for g in state["generator_optimizer"]["param_groups"]] == [3e-6]
    assert [g["lr"] for g in state["critic_optimizer"]["param_groups"]] == [7e-6]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(teacher, tmp_path):
    distill.main(tiny_args(teacher, tmp_path))
    before = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    # a learning rate far too high throws the student's weights out of range in one step; the next loss is NaN
    with pytest.raises(SystemExit, match="non-finite.*lower the learning rates"):
        distill.main(tiny_args(teacher, tmp_path, "--resume=1", "--dmd_steps=4", "--lr=1e30"))
    after = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert after["step"] == before["step"] == 4
    for key in ("student", "ema", "critic"):
        for name in before[key]:
            assert torch.equal(before[key][name], after[key][name]), (key, name)


def test_ddp_two_cpu_processes(teacher, tmp_path):
    result = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "distill.py", *tiny_args(teacher, tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    state, _ = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert state["step"] == 4 and all(torch.isfinite(torch.tensor(v)).all() for v in state["losses"].values())


def test_teacher_states_lie_on_its_ode_path(teacher):
    # A fresh VideoDiT predicts clean = 0 (zero-initialised output layer), so its ODE is dx/ds = x / s,
    # solved by x(s) = s * x(1), and Euler steps follow it exactly: every kept state must be level * noise.
    state, config = load_checkpoint(teacher)
    model = VideoDiT(config).eval()
    labels = torch.tensor([0, 1])
    keep = {1.0, 0.7, 0.3}
    states = distill.teacher_trajectories(model, labels, config.frames, keep, steps=5, guidance=3.0, guidance_cutoff=0.7, seed=0)
    assert set(states) == keep | {0.0}
    for level in keep:
        assert torch.allclose(states[level], level * states[1.0], atol=1e-5), level
    assert states[0.0].abs().max() < 1e-5


def test_ode_pairs_are_remade_for_a_retrained_teacher(teacher, tmp_path, monkeypatch):
    # the cache is keyed on the teacher's bytes: the same teacher reuses it, a teacher overwritten at the
    # same path (retrained) gets new pairs
    path = str(tmp_path / "teacher.pt")
    state, model_config = load_checkpoint(teacher)
    distill.save_checkpoint(state, path)
    model = VideoDiT(model_config).eval()
    config = distill.DistillConfig(teacher=path, ode_pairs=2, teacher_steps=2, pairs_path=str(tmp_path / "pairs.pt"))
    distill.ode_pairs(model, config, 2, "cpu", master=True)
    calls = []
    real_trajectories = distill.teacher_trajectories
    monkeypatch.setattr(distill, "teacher_trajectories", lambda *a, **k: calls.append(1) or real_trajectories(*a, **k))
    distill.ode_pairs(model, config, 2, "cpu", master=True)
    assert calls == []  # read from the cache
    state["step"] = state.get("step", 0) + 1  # "retrained": same path, other contents
    distill.save_checkpoint(state, path)
    remade = distill.ode_pairs(model, config, 2, "cpu", master=True)
    assert calls == [1]
    assert torch.load(config.pairs_path, weights_only=False)["made_with"] == remade["made_with"]


def test_ode_margin_keeps_the_middle_of_a_longer_teacher_clip(teacher, tmp_path):
    # with a margin the teacher draws 2 frames more at each end and the pairs are its clip's middle, state
    # by state: the same numbers as a longer trajectory cropped, not a 16-frame one
    state, model_config = load_checkpoint(teacher)
    model = VideoDiT(model_config).eval()
    model.load_state_dict(state["ema"])
    config = distill.DistillConfig(teacher=teacher, ode_pairs=2, teacher_steps=2, ode_margin=2,
                                   pairs_path=str(tmp_path / "pairs.pt"))
    pairs = distill.ode_pairs(model, config, 2, "cpu", master=True)
    frames = model_config.frames
    longer = distill.teacher_trajectories(model, pairs["labels"], frames + 4, list(pairs["states"]), 2,
                                          config.guidance, config.guidance_cutoff, seed=config.seed)
    plain = distill.teacher_trajectories(model, pairs["labels"], frames, list(pairs["states"]), 2,
                                         config.guidance, config.guidance_cutoff, seed=config.seed)
    for level, kept in pairs["states"].items():
        assert kept.shape[1] == frames
        assert torch.equal(kept, longer[level][:, 2:2 + frames])
    assert not torch.allclose(pairs["states"][0.0], plain[0.0], atol=1e-3)
    assert pairs["made_with"]["margin"] == 2


@pytest.mark.parametrize("align, expected", [(1, "last"), (0, "clean")])
def test_align_switch_sets_the_training_context(teacher, tmp_path, monkeypatch, align, expected):
    seen = []
    real_rollout = distill.rollout

    def recording_rollout(model, plan, context, *args, **kwargs):
        if model.training:  # the training rollouts; the GIF at checkpoints streams with the inference rule
            seen.append(context)
        return real_rollout(model, plan, context, *args, **kwargs)
    monkeypatch.setattr(distill, "rollout", recording_rollout)
    distill.main(tiny_args(teacher, tmp_path, f"--align={align}", "--context=last"))
    assert seen and set(seen) == {expected}


@pytest.mark.parametrize("real_flags, expected", [((), (2.0, 0.6)), (("--real_guidance=5", "--real_guidance_cutoff=0.8"), (5.0, 0.8))])
def test_guidance_settings_reach_the_pairs_and_the_real_score(teacher, tmp_path, monkeypatch, real_flags, expected):
    pair_guidance, score_guidance = [], []
    real_trajectories, real_predict = distill.teacher_trajectories, distill.predict_clean
    monkeypatch.setattr(distill, "teacher_trajectories",
                        lambda model, labels, frames, keep, steps, guidance, cutoff, seed: pair_guidance.append((guidance, cutoff))
                        or real_trajectories(model, labels, frames, keep, steps, guidance, cutoff, seed))
    monkeypatch.setattr(distill, "predict_clean", lambda model, video, levels, labels, guidance=1.0, cutoff=None, **look:
                        score_guidance.append((guidance, cutoff))
                        or real_predict(model, video, levels, labels, guidance, cutoff or 1.0, **look))
    distill.main(tiny_args(teacher, tmp_path, "--guidance=2", "--guidance_cutoff=0.6", *real_flags))
    assert pair_guidance and set(pair_guidance) == {(2.0, 0.6)}  # the ODE pairs keep `guidance` and its cutoff
    # the critic unguided; the real score with the pairs' settings unless given its own
    assert set(score_guidance) == {(1.0, None), expected}


@pytest.mark.parametrize("critic_flags, expected", [((), (0.0, 0.05)), (("--critic_motion_weight=4", "--critic_weight_floor=0.5"), (4.0, 0.5))])
def test_critic_objective_settings_reach_its_loss(teacher, tmp_path, monkeypatch, critic_flags, expected):
    seen = []
    real_loss = distill.flow_matching_loss
    monkeypatch.setattr(distill, "flow_matching_loss",
                        lambda model, video, labels, config, generator, motion_weight, weight_floor, **look:
                        seen.append((motion_weight, weight_floor))
                        or real_loss(model, video, labels, config, generator, motion_weight, weight_floor, **look))
    distill.main(tiny_args(teacher, tmp_path, *critic_flags))
    assert seen and set(seen) == {expected}


@pytest.mark.parametrize("flow_flags, flow_level", [((), 0.62), (("--flow_level=0.2",), 0.2)])
def test_flow_loss_reads_the_scores_at_its_own_levels(teacher, tmp_path, monkeypatch, flow_flags, flow_level):
    predictions, dmd_levels, flow_levels = [], [], []  # (clean clip, the level it was predicted at)
    real_predict, real_dmd, real_flow = distill.predict_clean, distill.dmd_loss, distill.flow_dmd_loss

    def level_of(clean):
        return next(level for seen, level in predictions if seen is clean)

    def predict(model, video, levels, labels, *guidance, **second_look):
        clean = real_predict(model, video, levels, labels, *guidance, **second_look)
        predictions.append((clean, levels.mean().item()))
        return clean
    monkeypatch.setattr(distill, "predict_clean", predict)
    monkeypatch.setattr(distill, "dmd_loss", lambda video, fake, real: dmd_levels.extend(map(level_of, (fake, real)))
                        or real_dmd(video, fake, real))
    monkeypatch.setattr(distill, "flow_dmd_loss", lambda video, fake, real, flow_repr: flow_levels.extend(map(level_of, (fake, real)))
                        or real_flow(video, fake, real, flow_repr))
    # a narrow level distribution: DMD's levels sit at sigmoid(noise_mean) = 0.62, the flow loss's at its own
    distill.main(tiny_args(teacher, tmp_path, "--noise_mean=0.5", "--noise_std=0.001", *flow_flags))
    assert len(dmd_levels) == len(flow_levels) == 4  # two generator steps, a fake and a real score each
    assert dmd_levels == pytest.approx([0.62] * 4, abs=0.01)
    assert flow_levels == pytest.approx([flow_level] * 4, abs=0.01)


def test_a_teacher_with_a_high_noise_expert_gives_real_and_fake_scores_as_two_halves(teacher, tmp_path, monkeypatch):
    from model import LevelExperts, export_weights
    train.main([TINY, f"--out_dir={tmp_path / 'expert'}", f"--init_from={teacher}", "--min_level=0.5", "--seed=1"])
    experts = str(tmp_path / "experts.pt")
    export_weights(teacher, experts, str(tmp_path / "expert" / "ckpt.pt"))
    expert_weights = torch.load(experts, weights_only=False)["expert"]["ema"]
    scores, pairs = distill.score_predictions, distill.ode_pairs
    # the two-half teacher for everything, then for the real score only (--real_teacher), when the ODE pairs
    # come from the plain teacher
    for run, pairs_teacher, extra in (("both", LevelExperts, []), ("real", VideoDiT, [f"--real_teacher={experts}"])):
        seen, pairs_seen = [], []
        monkeypatch.setattr(distill, "score_predictions",
                            lambda real, fake, *rest: seen.append((real, fake)) or scores(real, fake, *rest))
        monkeypatch.setattr(distill, "ode_pairs", lambda model, *rest: pairs_seen.append(model) or pairs(model, *rest))
        # critic levels centred on 0.5 (logit-normal around 0), so its clips go to both halves
        distill.main(tiny_args(experts if run == "both" else teacher, tmp_path / run, "--noise_mean=0.0", *extra))
        assert seen and all(isinstance(real, LevelExperts) and isinstance(fake, LevelExperts) for real, fake in seen)
        assert pairs_seen and all(type(model) is pairs_teacher for model in pairs_seen)
        # the critic started as both halves of the teacher and its critic updates trained both of them
        critic_weights = torch.load(tmp_path / run / "ckpt.pt", weights_only=False)["critic"]
        for half, start in (("high", expert_weights), ("low", torch.load(teacher, weights_only=False)["ema"])):
            assert any(not torch.equal(critic_weights[f"{half}.{name}"], weight) for name, weight in start.items()), half


def test_second_look_gives_a_self_conditioned_score_its_own_first_estimate(teacher, tmp_path, monkeypatch):
    """--second_look=1 (the default): the real score and the critic of a self-conditioned teacher look
    twice, as its sampler does, the second pass reading the clean clip the first (guided) pass implied;
    the critic also trains with train.py's second look. Off, or for a plain net, one pass, no estimate."""
    from model import ModelConfig
    from sample import guided_velocity
    torch.manual_seed(0)
    net = VideoDiT(ModelConfig(image_size=8, frames=4, width=32, depth=1, heads=2, num_labels=train.NUM_LABELS,
                               self_condition=True))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    video, levels, labels = torch.randn(2, 4, 3, 8, 8), torch.tensor([0.3, 0.8]), torch.tensor([0, 1])
    noise_levels, s = levels[:, None].expand(2, 4), levels[:, None, None, None, None]
    estimates, forward = [], net.forward
    monkeypatch.setattr(net, "forward", lambda *args, clean_estimate=None: estimates.append(clean_estimate)
                        or forward(*args, clean_estimate=clean_estimate))
    with torch.no_grad():
        once = video - s * guided_velocity(net, video, noise_levels, labels, 3.0, 1.0)
        twice = video - s * guided_velocity(net, video, noise_levels, labels, 3.0, 1.0, once)
        estimates.clear()
        assert torch.allclose(distill.predict_clean(net, video, levels, labels, 3.0, 1.0, second_look=True), twice)
        assert estimates[0] is None and len(estimates) == 2 and not torch.allclose(once, twice)
        estimates.clear()
        assert torch.allclose(distill.predict_clean(net, video, levels, labels, 3.0, 1.0), once) and estimates == [None]
        plain = VideoDiT(ModelConfig(image_size=8, frames=4, width=32, depth=1, heads=2, num_labels=train.NUM_LABELS))
        plain_estimates, plain_forward = [], plain.forward
        monkeypatch.setattr(plain, "forward", lambda *args, clean_estimate=None: plain_estimates.append(clean_estimate)
                            or plain_forward(*args, clean_estimate=clean_estimate))
        distill.predict_clean(plain, video, levels, labels, 3.0, 1.0, second_look=True)
        assert plain_estimates == [None]

    # the switch reaches both scores and the critic's training of a self-conditioned teacher, not a plain one's
    train.main([TINY, "--self_condition=1", f"--out_dir={tmp_path / 'sc'}"])
    real_predict, real_loss = distill.predict_clean, distill.flow_matching_loss
    self_conditioned = tmp_path / "sc" / "ckpt.pt"
    for teacher_path, flag, critic_look in ((self_conditioned, 0, False), (self_conditioned, 1, True), (teacher, 1, False)):
        looks, critic_looks = set(), set()
        monkeypatch.setattr(distill, "predict_clean", lambda *args, second_look=False, **kwargs: looks.add(second_look)
                            or real_predict(*args, second_look=second_look, **kwargs))
        monkeypatch.setattr(distill, "flow_matching_loss", lambda *args, self_condition=False:
                            critic_looks.add(self_condition) or real_loss(*args, self_condition=self_condition))
        distill.main(tiny_args(str(teacher_path), tmp_path / f"look{flag}{critic_look}", f"--second_look={flag}"))
        assert looks == {bool(flag)} and critic_looks == {critic_look}
    # a run whose DMD steps read zeros does not quietly go on with a second look
    with pytest.raises(SystemExit, match="second_look=0"):
        distill.main(tiny_args(str(self_conditioned), tmp_path / "look0False", "--second_look=1", "--resume=1"))


def test_a_real_score_teacher_of_another_size_gives_the_critic_its_size(teacher, tmp_path, monkeypatch):
    train.main([TINY, f"--out_dir={tmp_path / 'deeper'}", "--depth=2"])
    deeper = str(tmp_path / "deeper" / "ckpt.pt")
    seen, scores = [], distill.score_predictions
    monkeypatch.setattr(distill, "score_predictions", lambda real, fake, *rest: seen.append((real, fake)) or scores(real, fake, *rest))
    distill.main(tiny_args(teacher, tmp_path / "student", f"--real_teacher={deeper}"))
    assert seen and all(len(real.blocks) == len(fake.blocks) == 2 for real, fake in seen)
    # the student keeps the pairs' teacher's size (one block), the critic the real score's (two)
    state = torch.load(tmp_path / "student" / "ckpt.pt", weights_only=False)
    assert state["model_config"]["depth"] == 1 and not any(name.startswith("blocks.1.") for name in state["ema"])
    assert any(name.startswith("blocks.1.") for name in state["critic"])
    # resuming without that teacher fails with one line instead of a state-dict traceback
    with pytest.raises(SystemExit, match="resume with the --real_teacher it began with"):
        distill.main(tiny_args(teacher, tmp_path / "student", "--resume=1"))


def test_clear_errors(teacher, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "distill.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    bad_context = run(*tiny_args(teacher, tmp_path, "--context=dirty"))
    assert bad_context.returncode != 0 and "unknown context" in bad_context.stderr.strip().splitlines()[-1]
    bad_level = run(*tiny_args(teacher, tmp_path, "--flow_level=1.5"))
    assert bad_level.returncode != 0 and "flow_level is a noise level" in bad_level.stderr.strip().splitlines()[-1]
    bad_margin = run(*tiny_args(teacher, tmp_path, "--ode_margin=-1"))
    assert bad_margin.returncode != 0 and "ode_margin counts frames" in bad_margin.stderr.strip().splitlines()[-1]
    missing = run(*tiny_args(tmp_path / "nope.pt", tmp_path))
    assert missing.returncode != 0 and "no checkpoint at" in missing.stderr.strip().splitlines()[-1]
    distill.main(tiny_args(teacher, tmp_path / "student"))
    from_student = run(*tiny_args(tmp_path / "student" / "ckpt.pt", tmp_path / "again"))
    assert from_student.returncode != 0 and "causal student" in from_student.stderr.strip().splitlines()[-1]
    state = torch.load(teacher, weights_only=False)
    state["model_config"]["noise_correlation"] = 0.5
    torch.save(state, tmp_path / "shared_noise.pt")
    with pytest.raises(SystemExit, match="noise shared across frames"):
        distill.main(tiny_args(tmp_path / "shared_noise.pt", tmp_path / "from_shared_noise"))
    # a real score's teacher is checked alike, and must draw the pairs' teacher's world
    state["model_config"].update(noise_correlation=0.0, image_size=2 * state["model_config"]["image_size"])
    torch.save(state, tmp_path / "larger_frames.pt")
    for real_teacher, message in ((tmp_path / "student" / "ckpt.pt", "causal student"),
                                  (tmp_path / "shared_noise.pt", "noise shared across frames"),
                                  (tmp_path / "larger_frames.pt", "teachers of one world")):
        with pytest.raises(SystemExit, match=message):
            distill.main(tiny_args(teacher, tmp_path / "with_real_teacher", f"--real_teacher={real_teacher}"))


def test_shipped_student_streams_the_toy_world(tmp_path):
    from data import frame_objects, world_metrics
    from model import build_model
    from sample import stream
    teacher_state, teacher_config = load_checkpoint(os.path.join(ROOT, "assets", "teacher.pt"))
    state, config = load_checkpoint(os.path.join(ROOT, "assets", "student.pt"))
    assert config == teacher_config and state["causal"] and not teacher_state["causal"]
    assert os.path.getsize(os.path.join(ROOT, "assets", "student.pt")) < 10 * 2 ** 20
    student = build_model(state, config)
    labels = torch.arange(0, 18, 3)  # every shape, every colour
    video = ((torch.cat(list(stream(student, labels, 16, seed=0)), 1) + 1) / 2).clamp(0, 1)
    metrics = world_metrics(video, labels, frame_objects(video))
    assert metrics["cleanliness"] > 0.9                    # noise scores about 0.3
    assert 0.8 < metrics["objects_per_frame"] < 3.0        # real clips: 1.55
    # and `python sample.py` with no arguments streams from it
    result = subprocess.run([sys.executable, "sample.py", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "stream.gif").exists() and (tmp_path / "stream.npz").exists()


def test_chunk_mean_anchor_leaves_the_motion_inside_a_chunk_free(teacher):
    # Moving the target's two frames of a chunk apart (+d on one, -d on the other) keeps each chunk's mean
    # frame, so the chunk-mean anchor must not notice; the full regression must.
    _, config = load_checkpoint(teacher)
    torch.manual_seed(0)
    student = VideoDiT(config, causal=True).eval()
    for p in student.parameters():  # a fresh model predicts 0 everywhere; give it something to say
        torch.nn.init.normal_(p, std=0.2)
    plan = distill.PLANS["diagonal"](config.frames // config.chunk_frames)
    labels = torch.tensor([0, 5])
    shape = (len(labels), config.frames, 3, config.image_size, config.image_size)
    states = {level: torch.randn(shape) for levels in plan for level in levels}
    states[0.0] = torch.randn(shape)
    moved = dict(states)
    apart = torch.randn(shape[:1] + shape[2:])
    moved[0.0] = states[0.0].clone()
    moved[0.0][:, 0::2] += apart[:, None]
    moved[0.0][:, 1::2] -= apart[:, None]

    def loss(states, chunk_mean):
        return distill.ode_loss(student, states, plan, "last", labels, torch.Generator().manual_seed(1), chunk_mean)

    assert loss(moved, True).item() == pytest.approx(loss(states, True).item(), rel=1e-5)
    assert loss(moved, False).item() > 1.1 * loss(states, False).item()


def test_a_causal_net_trained_with_a_level_per_chunk_is_where_a_student_can_start(teacher, tmp_path, monkeypatch):
    """train.py --causal=1: the net is chunk-causal and every chunk is noised at its own level (the model
    is told the levels it was noised at), resumed only as a causal net; distill.py --student_init starts the
    student at its weights and refuses a teacher, which is no causal net."""
    config = train.TrainConfig(frames=6, chunk_frames=2)
    video, seen = torch.zeros(64, 6, 3, 4, 4), {}

    def model(noisy, levels, labels, clean_estimate=None):  # an exact clean prediction if `levels` is right
        seen["levels"] = levels
        return noisy / levels[:, :, None, None, None]
    labels = torch.zeros(64, dtype=torch.long)
    loss = train.flow_matching_loss(model, video, labels, config, torch.Generator().manual_seed(0), chunk_levels=True)
    assert loss.item() < 1e-10
    levels = seen["levels"]
    assert torch.equal(levels[:, 0::2], levels[:, 1::2])                  # one level per chunk ...
    assert (levels[:, 0] != levels[:, 2]).all() and (levels[:, 2] != levels[:, 4]).all()  # ... each its own

    trained, real_loss = {}, train.flow_matching_loss

    def remember_the_training(model, *args, chunk_levels=False, **kwargs):
        trained.setdefault("causal", (model.causal, chunk_levels))
        return real_loss(model, *args, chunk_levels=chunk_levels, **kwargs)
    monkeypatch.setattr(train, "flow_matching_loss", remember_the_training)
    train.main([TINY, "--causal=1", f"--init_from={teacher}", f"--out_dir={tmp_path / 'causal'}"])
    assert trained["causal"] == (True, True)                              # a causal net, a level per chunk
    causal_path = str(tmp_path / "causal" / "ckpt.pt")
    state, model_config = load_checkpoint(causal_path)
    assert state["causal"] and build_model(state, model_config).causal
    teacher_weights = load_checkpoint(teacher)[0]["ema"]
    assert any(not torch.equal(state["ema"][name], teacher_weights[name]) for name in teacher_weights)
    with pytest.raises(SystemExit, match="resume with --causal=1"):
        train.main([TINY, "--resume=1", f"--out_dir={tmp_path / 'causal'}"])
    with pytest.raises(SystemExit, match="multiples of chunk_frames"):
        train.main([TINY, "--causal=1", "--frames=5", f"--out_dir={tmp_path / 'odd'}"])
    started = {}
    real_regression = distill.ode_loss

    def remember_the_start(student, *args, **kwargs):  # the student's weights at its first stage-1 step
        started.setdefault("weights", {k: v.clone() for k, v in student.state_dict().items()})
        return real_regression(student, *args, **kwargs)
    monkeypatch.setattr(distill, "ode_loss", remember_the_start)
    distill.main(tiny_args(teacher, tmp_path / "student", f"--student_init={causal_path}"))
    for name, weights in state["ema"].items():
        assert torch.equal(started["weights"][name], weights), name
    with pytest.raises(SystemExit, match="no train.py causal net"):
        distill.main(tiny_args(teacher, tmp_path / "refused", f"--student_init={teacher}"))
