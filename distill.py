"""
Distill the many-step teacher into a few-step streaming student (PAPER.md, "Training (distillation)").

Two stages, one step counter (steps 0 .. ode_steps-1 are stage 1, the rest stage 2):

1. `ode` (CausVid's initialisation). The guided teacher integrates its ODE from fixed noise; we keep
   its states at exactly the student's noise levels. The causal student then learns to jump from the
   state of a random step of each chunk's plan to the teacher's final clip, with earlier chunks in the
   KV cache as the context rule leaves them at inference (aligned from the start).
2. `dmd` (distribution matching, DMD2 style). The student generates clips through sample.py's
   `rollout` (the very function inference uses: alignment by construction), with gradient on one
   random exit step per chunk. Its clip x is noised to a random level; the guided teacher ("real
   score") and a critic ("fake score", a bidirectional copy of the teacher trained by flow matching
   on the student's own clips) both predict the clean clip, and their difference is the gradient that
   moves the student's distribution towards the teacher's. The flow loss (flow.py) applies the same
   idea to motion. The critic takes `critic_updates` steps per generator step.

Ablations: --plan uniform|diagonal|paper, --context clean|renoise|last, --align 0 (train with clean
context while inference uses the plan's rule: the mismatch of PAPER.md), --flow_weight, --flow_repr.

    python distill.py config/distill_cpu.py                 # both stages on a laptop CPU
    python distill.py config/distill_cpu.py --resume=1
    torchrun --nproc_per_node=2 distill.py config/tiny_distill.py
"""
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, asdict

import torch
import torch.distributed as dist
from tqdm import tqdm

from data import NUM_LABELS, save_gif
from flow import FLOW_REPRS, dmd_loss, flow_dmd_loss
from model import VideoDiT, build_model, load_checkpoint, save_checkpoint
from sample import NoiseSource, StreamingStep, guided_velocity, pick_device, plan_by_name, rollout
from schedule import CONTEXT_RULES, LAST_LEVEL, PLANS, context_level, warp
from train import flow_matching_loss, parse_config, plot_losses


@dataclass
class DistillConfig:
    teacher: str = "assets/teacher.pt"
    real_teacher: str = ""        # if set, the DMD real score's teacher alone, of any size (the ODE pairs and the
                                  # student keep `teacher`): the two-half teacher's pairs teach a fading student
                                  # (README, "Where the fade starts")
    student_init: str = ""        # if set, a train.py --causal=1 checkpoint the student starts from (not the teacher)
    plan: str = "diagonal"
    context: str = "last"
    align: bool = True            # False: train with clean context, infer with the plan's rule (ablation)
    guidance: float = 3.0         # the teacher's guidance in its ODE pairs and in the DMD real score
    real_guidance: float = 0.0    # if set, the real score's guidance alone (the ODE pairs keep `guidance`)
    # Default: guided at every level, as in the paper. config/distill_cpu.py guides the ODE pairs only up
    # to 0.7, as the teacher's own sampler does (a far better stage 1), and the real score everywhere.
    guidance_cutoff: float = 1.0  # the ODE pairs' teacher is guided only at noise levels up to this
    real_guidance_cutoff: float = 0.0  # if set, the real score's cutoff alone (0: use guidance_cutoff)
    batch_size: int = 8
    # stage 1: ODE regression
    ode_steps: int = 300
    ode_pairs: int = 128          # teacher trajectories, made once and cached in pairs_path
    pairs_path: str = "out/ode_pairs.pt"
    teacher_steps: int = 24       # Euler steps of the teacher's ODE (the student's levels are added)
    ode_margin: int = 0           # frames the teacher draws beyond each end of the clip, then dropped: its
                                  # objects are slow at a clip's ends (README, "How slow, and where")
    ode_lr: float = 3e-4
    # stage 2: DMD
    dmd_steps: int = 200
    critic_updates: int = 5
    lr: float = 1e-4              # generator
    critic_lr: float = 1e-4
    dmd_weight: float = 1.0
    flow_weight: float = 1.0
    flow_repr: str = "diff"       # diff: frame differences (the paper's code); flow: flow.py's estimator
    flow_level: float = 0.0       # if set, the flow loss's median noise level, drawn apart from DMD's (0: DMD's)
    regression_weight: float = 0.0  # stage 1's loss kept on in stage 2, as in the first DMD paper (0: off)
    anchor_chunk_mean: bool = False  # the stage-2 anchor on each chunk's mean frame only, leaving its frames'
                                     # motion to DMD (not shipped: README, "The anchor on chunk means")
    noise_mean: float = 0.5       # DMD and critic levels: logit-normal, as in the teacher's training
    noise_std: float = 1.0
    critic_motion_weight: float = 0.0  # the critic's flow-matching loss: train.py's motion_weight and
    critic_weight_floor: float = 0.05  # weight_floor (the teacher preset's 4 and 0.5 read worse: README)
    label_dropout: float = 0.0    # the critic is only ever asked conditional questions
    second_look: bool = True      # a self-conditioned real score and critic read their own first estimate, as
                                  # the teacher's sampler does; off, zeros: a worse teacher (EXPERIMENTS.md,
                                  # "The scores' second look")
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.99
    # bookkeeping
    out_dir: str = "out/student"
    eval_interval: int = 100
    seed: int = 0
    threads: int = 0
    resume: bool = False


def check(config):
    if config.context not in CONTEXT_RULES:
        raise SystemExit(f"error: unknown context {config.context!r}; use one of {', '.join(CONTEXT_RULES)}")
    if config.flow_repr not in FLOW_REPRS:
        raise SystemExit(f"error: flow_repr must be one of {', '.join(FLOW_REPRS)}, got {config.flow_repr!r}")
    if not 0 <= config.flow_level < 1:
        raise SystemExit(f"error: flow_level is a noise level in (0, 1), or 0 to share DMD's levels; got {config.flow_level}")
    if config.ode_margin < 0:
        raise SystemExit(f"error: ode_margin counts frames and cannot be negative, got {config.ode_margin}")
    if config.critic_updates < 1 or config.batch_size < 1:
        raise SystemExit("error: critic_updates and batch_size must be at least 1")


def predict_clean(model, video, levels, labels, guidance=1.0, guidance_cutoff=1.0, second_look=False):
    """The clean clip a bidirectional model sees in `video` at per-sample `levels` [B]. With
    `second_look`, a self-conditioned model reads its own first (guided) estimate beside the clip, as
    the teacher's sampler does."""
    noise_levels = levels[:, None].expand(video.shape[:2])
    clean = None
    for _ in range(2 if second_look and model.config.self_condition else 1):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.device.type == "cuda"):
            velocity = guided_velocity(model, video, noise_levels, labels, guidance, guidance_cutoff, clean)
        clean = video - levels[:, None, None, None, None] * velocity.float()
    return clean


@torch.no_grad()
def teacher_trajectories(teacher, labels, frames, keep_levels, steps, guidance, guidance_cutoff, seed):
    """Euler-integrate the guided teacher from noise; return {level: state} for every level in keep_levels
    (level 0 is the final clip). The student's levels are inserted into the Euler grid so that each
    kept state is exactly on the teacher's path, not interpolated."""
    c, device = teacher.config, labels.device
    grid = sorted({warp(1 - i / steps) for i in range(steps + 1)} | set(keep_levels), reverse=True)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), frames, 3, c.image_size, c.image_size, generator=generator).to(device)
    states, clean = {}, None  # a self-conditioned teacher reads the last step's clean estimate, as in sample_teacher
    for level, next_level in zip(grid[:-1], grid[1:]):
        if level in keep_levels:
            states[level] = x.clone()
        noise_levels = torch.full((len(labels), frames), level, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            velocity = guided_velocity(teacher, x, noise_levels, labels, guidance, guidance_cutoff, clean).float()
        clean = x - level * velocity
        x = x + (next_level - level) * velocity
    states[0.0] = x
    return states


def ode_pairs(teacher, config, num_chunks, device, master):
    """Stage 1 data: teacher trajectories kept at every level any plan or context rule uses, so that
    runs with other plans (the ablations) share one cache file when they share the teacher."""
    # keyed on the teacher's bytes, not its path: a retrained assets/teacher.pt must not reuse old pairs
    with open(config.teacher, "rb") as f:
        teacher_sha256 = hashlib.sha256(f.read()).hexdigest()
    made_with = dict(teacher_sha256=teacher_sha256, pairs=config.ode_pairs, teacher_steps=config.teacher_steps,
                     guidance=config.guidance, guidance_cutoff=config.guidance_cutoff, seed=config.seed, num_chunks=num_chunks,
                     margin=config.ode_margin)
    if os.path.isfile(config.pairs_path):
        pairs = torch.load(config.pairs_path, map_location=device)
        if pairs["made_with"] == made_with:
            return pairs
        if master:
            print(f"{config.pairs_path} was made with other settings ({pairs['made_with']}); making new pairs")
    keep = {level for make_plan in PLANS.values() for levels in make_plan(num_chunks) for level in levels} | {LAST_LEVEL}
    labels = torch.arange(config.ode_pairs, device=device) % NUM_LABELS
    frames, margin = teacher.config.frames, config.ode_margin
    batches = [teacher_trajectories(teacher, labels[i:i + 32], frames + 2 * margin, keep, config.teacher_steps,
                                    config.guidance, config.guidance_cutoff, seed=config.seed + i)
               for i in tqdm(range(0, config.ode_pairs, 32), desc="teacher ODE pairs", disable=not master)]
    states = {k: torch.cat([b[k][:, margin:margin + frames] for b in batches]) for k in batches[0]}
    pairs = dict(made_with=made_with, labels=labels, states=states)
    if master:
        save_checkpoint(pairs, config.pairs_path)
    return pairs


def ode_loss(student, states, plan, context, labels, generator, chunk_mean=False):
    """Stage 1: per chunk, from the teacher's state at a random step of the chunk's plan, predict the
    teacher's final chunk; then leave the chunk in the cache as the context rule would at inference."""
    c = student.config
    B, Fc = len(labels), c.chunk_frames
    step = StreamingStep(student, student.new_cache(B), labels)
    target, losses = states[0.0], []
    for chunk_index, levels in enumerate(plan):
        frames = slice(chunk_index * Fc, (chunk_index + 1) * Fc)
        offset = chunk_index * Fc
        level = levels[torch.randint(len(levels), (1,), generator=generator).item()]
        clean = step(states[level][:, frames], torch.full((B, Fc), level, device=labels.device), offset)
        error = clean - target[:, frames]
        losses.append((error.mean(1) if chunk_mean else error).square().mean())
        cache_level = context_level(context, levels)
        cache_level = levels[-1] if cache_level is None else cache_level  # `last`: the chunk's last input
        with torch.no_grad():
            step(states[cache_level][:, frames], torch.full((B, Fc), cache_level, device=labels.device), offset)
    return torch.stack(losses).mean()


def sample_levels(mean, std, batch_size, generator, device):
    return torch.sigmoid(mean + std * torch.randn(batch_size, generator=generator)).to(device)


@torch.no_grad()
def score_predictions(teacher, critic, config, video, levels, labels, generator):
    """The critic's ("fake") and the guided teacher's ("real") clean clips from `video` noised to `levels`."""
    s = levels[:, None, None, None, None]
    eps = torch.randn(video.shape, generator=generator).to(video.device)
    noisy = (1 - s) * video.detach() + s * eps
    real_clean = predict_clean(teacher, noisy, levels, labels, config.real_guidance or config.guidance,
                               config.real_guidance_cutoff or config.guidance_cutoff, second_look=config.second_look)
    return predict_clean(critic, noisy, levels, labels, second_look=config.second_look), real_clean


def generator_loss(student, teacher, critic, config, plan, train_context, labels, generator):
    """Stage 2, the student's side: DMD on the whole clip plus the flow-DMD loss on its motion."""
    exit_steps = [torch.randint(len(levels), (1,), generator=generator).item() for levels in plan]
    noise = NoiseSource(torch.randint(2 ** 30, (1,), generator=generator).item(), len(labels), student.config, labels.device)
    video = rollout(student, plan, train_context, labels, noise, exit_steps)
    levels = sample_levels(config.noise_mean, config.noise_std, len(labels), generator, labels.device)
    fake_clean, real_clean = score_predictions(teacher, critic, config, video, levels, labels, generator)
    dmd = dmd_loss(video, fake_clean, real_clean)
    if not config.flow_weight:
        return config.dmd_weight * dmd, dmd.detach(), torch.zeros(())
    if config.flow_level:
        # The motion at its own levels: a step of 2 px and one of 1.5 px look much alike at the presets' DMD
        # levels (median 0.88, set high to hold the objects' shapes). Tried at 0.5 and 0.75, it still did not
        # lengthen the step inside a chunk (README, "The flow loss read at lower noise levels").
        levels = sample_levels(math.log(config.flow_level / (1 - config.flow_level)), config.noise_std,
                               len(labels), generator, labels.device)
        fake_clean, real_clean = score_predictions(teacher, critic, config, video, levels, labels, generator)
    motion = flow_dmd_loss(video, fake_clean, real_clean, config.flow_repr)
    return config.dmd_weight * dmd + config.flow_weight * motion, dmd.detach(), motion.detach()


def critic_loss(student, critic, config, plan, train_context, labels, generator):
    """Stage 2, the critic's side: flow matching on a fresh, detached student clip."""
    noise = NoiseSource(torch.randint(2 ** 30, (1,), generator=generator).item(), len(labels), student.config, labels.device)
    with torch.no_grad():
        video = rollout(student, plan, train_context, labels, noise)
    return flow_matching_loss(critic, video, labels, config, generator, config.critic_motion_weight,
                              config.critic_weight_floor, self_condition=config.second_look and critic.config.self_condition)


def average_gradients(model, world):
    """Data parallel by hand: the rollout calls the model many times per step, so instead of wrapping it
    in DistributedDataParallel we average the finished gradients across processes."""
    if world > 1:
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world


def update(model, optimizer, loss, grad_clip, world):
    """One optimiser step. A non-finite loss on any process stops every process before a weight changes:
    the gradients are averaged, so one process's NaN would reach every copy, and then a checkpoint."""
    finite = torch.isfinite(loss.detach()).float()
    if world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite:
        raise SystemExit(f"error: a loss became non-finite ({loss.item()}); lower the learning rates or resume "
                         f"from the last checkpoint")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(model, world)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def main(argv):
    config = parse_config(DistillConfig(), argv)
    check(config)
    ddp = "RANK" in os.environ
    device = pick_device()
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    master = rank == 0
    if config.threads:
        torch.set_num_threads(config.threads)

    def load_teacher(path):
        state, model_config = load_checkpoint(path, device)
        if state.get("causal"):
            raise SystemExit(f"error: {path} is a causal student; distill from a teacher checkpoint")
        if model_config.noise_correlation:  # ODE pairs, DMD noising and the student's chunks all draw independent noise
            raise SystemExit(f"error: {path} was trained on noise shared across frames; "
                             "distill from a teacher with noise_correlation=0")
        return state, model_config

    teacher_state, mconfig = load_teacher(config.teacher)
    real_state, real_config = load_teacher(config.real_teacher) if config.real_teacher else (teacher_state, mconfig)
    # the real score (and so the critic) may be a net of another size, a deeper teacher, say, while the
    # student keeps the size of the teacher whose pairs it regresses onto; but it must draw the same world
    if (real_config.image_size, real_config.num_labels) != (mconfig.image_size, mconfig.num_labels):
        raise SystemExit(f"error: {config.real_teacher} draws {real_config.image_size}px frames of {real_config.num_labels} "
                         f"labels, {config.teacher} {mconfig.image_size}px of {mconfig.num_labels}; use teachers of one world")
    teacher = build_model(teacher_state, mconfig, device)  # with its high-noise expert, if it has one
    real_teacher = build_model(real_state, real_config, device) if config.real_teacher else teacher
    # The critic starts as the real score's teacher, both halves if it has two, so that before the student
    # moves the fake score equals the real one but for guidance; the causal student starts as the
    # all-levels net of `teacher`, or as `student_init`.
    models = dict(critic=build_model(real_state, real_config, device).train().requires_grad_(True))
    student_weights = teacher_state["ema"]
    if config.student_init and not config.resume:  # a resumed run has its student in its own checkpoint
        init_state, _ = load_checkpoint(config.student_init, device, expect_config=mconfig, settings=())
        if not init_state.get("train_config", {}).get("causal"):
            raise SystemExit(f"error: {config.student_init} is no train.py causal net; make one with train.py --causal=1")
        student_weights = init_state["ema"]
    for name in ("student", "ema"):
        models[name] = VideoDiT(mconfig, causal=True).to(device)
        models[name].load_state_dict(student_weights)
    critic, student, ema = (models[k] for k in ("critic", "student", "ema"))
    ema.eval().requires_grad_(False)
    num_chunks = -(-mconfig.frames // mconfig.chunk_frames)
    plan = plan_by_name(config.plan, num_chunks)
    train_context = config.context if config.align else "clean"
    adamw = lambda model, lr, betas: torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=config.weight_decay)
    ode_optimizer = adamw(student, config.ode_lr, (0.9, 0.99))
    generator_optimizer = adamw(student, config.lr, (0.0, 0.999))  # betas (0, 0.999) as in DMD2
    critic_optimizer = adamw(critic, config.critic_lr, (0.0, 0.999))
    rng = torch.Generator().manual_seed(config.seed)
    step, losses = 0, {"ode": [], "dmd": [], "flow": [], "critic": [], "regression": []}
    ckpt_path = os.path.join(config.out_dir, "ckpt.pt")
    if config.resume:
        state, _ = load_checkpoint(ckpt_path, device, expect_config=mconfig)
        try:
            for name in ("student", "ema", "critic"):
                models[name].load_state_dict(state[name])
        except RuntimeError:  # a critic of another size: the run began with another real score's teacher
            raise SystemExit(f"error: {ckpt_path}'s critic does not fit this real score's teacher; resume with the "
                             f"--real_teacher it began with ({state['train_config'].get('real_teacher') or 'none'})")
        for name, optimizer, lr in (("ode_optimizer", ode_optimizer, config.ode_lr),
                                    ("generator_optimizer", generator_optimizer, config.lr),
                                    ("critic_optimizer", critic_optimizer, config.critic_lr)):
            optimizer.load_state_dict(state[name])
            for group in optimizer.param_groups:
                group["lr"] = lr  # a resumed run may change its learning rates; the saved state would overrule them
        began_with = state["train_config"].get("second_look", False)  # checkpoints from before the switch read zeros
        if real_config.self_condition and state["losses"]["dmd"] and began_with != config.second_look:
            raise SystemExit(f"error: {ckpt_path}'s DMD steps read the scores with --second_look={int(began_with)}; "
                             "resume with it")
        rng.set_state(state["rng"])
        step, losses = state["step"], state["losses"]

    if step < config.ode_steps or config.regression_weight:
        pairs = ode_pairs(teacher, config, num_chunks, device, master)

    def regression(generator, chunk_mean=False):
        """Stage 1's loss on a random batch of teacher trajectories (also stage 2's anchor, if weighted)."""
        index = torch.randint(config.ode_pairs, (config.batch_size,), generator=generator).to(device)
        states = {level: s[index] for level, s in pairs["states"].items()}
        return ode_loss(student, states, plan, train_context, pairs["labels"][index], generator, chunk_mean)

    if master:
        print(f"distill: {config.teacher}" + (f" (real score: {config.real_teacher})" if config.real_teacher else "")
              + f" -> {config.out_dir}; plan {config.plan} {[len(l) for l in plan]}, context "
              f"{config.context} (training with {train_context}), flow loss {config.flow_weight} x {config.flow_repr}; "
              f"{world} process(es), from step {step}")

    def checkpoint():
        save_checkpoint(dict(model_config=asdict(mconfig), causal=True, train_config=asdict(config),
                             student=student.state_dict(), ema=ema.state_dict(), critic=critic.state_dict(),
                             ode_optimizer=ode_optimizer.state_dict(), generator_optimizer=generator_optimizer.state_dict(),
                             critic_optimizer=critic_optimizer.state_dict(), rng=rng.get_state(),
                             step=step, losses=losses), ckpt_path)
        plot_losses(losses, os.path.join(config.out_dir, "loss.png"), ylabel="distillation losses")
        labels = torch.arange(8, device=device) % NUM_LABELS
        with torch.no_grad():
            video = rollout(ema, plan, config.context, labels, NoiseSource(config.seed, 8, mconfig, device))
        save_gif((video.float().cpu() + 1) / 2, os.path.join(config.out_dir, f"samples_{step:06d}.gif"))

    total = config.ode_steps + config.dmd_steps
    start = time.time()
    bar = tqdm(total=total, initial=step, disable=not master, dynamic_ncols=True)
    while step < total:
        # one shared seed per step, then each process its own numbers from it (resume draws the same)
        generator = torch.Generator().manual_seed(torch.randint(2 ** 31, (1,), generator=rng).item() * world + rank)
        if step < config.ode_steps:
            loss = regression(generator)
            update(student, ode_optimizer, loss, config.grad_clip, world)
            losses["ode"].append(loss.item())
            shown = {"ode": losses["ode"][-1]}
        else:
            labels = torch.randint(NUM_LABELS, (config.batch_size,), generator=generator).to(device)
            critic_losses = []
            for _ in range(config.critic_updates):
                loss = critic_loss(student, critic, config, plan, train_context, labels, generator)
                update(critic, critic_optimizer, loss, config.grad_clip, world)
                critic_losses.append(loss.item())
            loss, dmd, motion = generator_loss(student, real_teacher, critic, config, plan, train_context, labels,
                                               generator)
            anchor = regression(generator, config.anchor_chunk_mean) if config.regression_weight else torch.zeros(())
            update(student, generator_optimizer, loss + config.regression_weight * anchor, config.grad_clip, world)
            for name, value in (("dmd", dmd.item()), ("flow", motion.item()), ("critic", sum(critic_losses) / len(critic_losses)),
                                ("regression", anchor.item())):
                losses.setdefault(name, []).append(value)
            shown = {name: losses[name][-1] for name in ("dmd", "flow", "critic", "regression")}
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), student.parameters()):
                p_ema.lerp_(p, 1 - config.ema)
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
        if master and (step % config.eval_interval == 0 or step in (config.ode_steps, total)):
            checkpoint()
    bar.close()
    if master:
        print(f"done: {step} steps in {(time.time() - start) / 60:.1f} min; checkpoint {ckpt_path} "
              f"(ship it with: python model.py {ckpt_path} assets/student.pt)")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
