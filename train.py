"""
Train the teacher: a bidirectional VideoDiT learns the toy world by rectified flow.

Rectified flow (PAPER.md, "Setting"): mix a clean clip x0 with Gaussian noise eps at level s,
x_s = (1 - s) x0 + s eps, and regress the velocity v = eps - x0. Every frame of a clip gets the same
level here (the teacher is a plain video diffusion model); the label is dropped 10% of the time so
that sampling can use classifier-free guidance. The result is the "undistilled model" that the
distilled student (distill.py) is measured against. With --causal=1 the same loop trains a
chunk-causal net instead, a starting point for the student (distill.py --student_init).

    python train.py config/cpu.py                    # a laptop run (see README for time and loss)
    python train.py config/cpu.py --steps=500 --lr=1e-3
    python train.py config/cpu.py --resume=1         # continue from out_dir/ckpt.pt
    python train.py config/ship.py --init_from=assets/teacher.pt --seed=1 --steps=2400 --lr=5e-4 --out_dir=out/more
    torchrun --nproc_per_node=2 train.py config/tiny.py   # data parallel (gloo on CPU)
"""
import ast
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, asdict, fields

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from data import NUM_LABELS, make_clips, save_gif
from flow import frame_differences
from model import LevelExperts, ModelConfig, VideoDiT, build_model, load_checkpoint, save_checkpoint
from sample import clip_noise, sample_teacher


@dataclass
class TrainConfig:
    # model (see model.ModelConfig)
    image_size: int = 32
    patch_size: int = 4
    frames: int = 16
    chunk_frames: int = 2
    patch_frames: int = 1
    width: int = 128
    depth: int = 4
    heads: int = 4
    noise_correlation: float = 0.0  # share of the noise common to a clip's frames (sample.clip_noise); sampling too
    self_condition: bool = False    # the net also reads its own last clean estimate (flow_matching_loss); sampling too
    # optimisation
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    label_dropout: float = 0.1
    noise_mean: float = 0.5    # noise levels are logit-normal: sigmoid(N(noise_mean, noise_std))
    noise_std: float = 1.0
    weight_floor: float = 0.05  # the loss weights the clean-frame error by 1 / max(level, weight_floor)^2
    motion_weight: float = 0.0  # > 0 adds the error of frame differences to the loss (see flow_matching_loss)
    frame_level_fraction: float = 0.0  # this fraction of clips gets a noise level per frame instead of one per clip
    min_level: float = 0.0     # > 0: a high-noise expert, levels uniform in [min_level, 1] (needs init_from; README)
    causal: bool = False       # chunk-causal attention and a noise level per chunk: not a teacher but a starting
                               # point for a streaming student (distill.py --student_init; README)
    short_frames: int = 0      # if > 0, the first short_steps steps train on clips of this many frames
    short_steps: int = 0       # (cheaper attention: many more steps for learning what frames look like)
    # bookkeeping
    out_dir: str = "out/teacher"
    eval_interval: int = 500
    sample_steps: int = 50
    seed: int = 0
    threads: int = 0           # CPU threads per process; 0 = torch's default
    bf16: bool = True          # bfloat16 autocast where it is fast: CUDA, and CPUs with bf16 units (see bf16_is_fast)
    compile: bool = False
    resume: bool = False
    init_from: str = ""        # start at a checkpoint's EMA weights, fresh optimiser (a new --seed: new batches)


def parse_config(config, argv):
    """nanoGPT-style configuration: preset files (python assignments) then --key=value overrides."""
    known = {f.name: f.type for f in fields(config)}

    def assign(key, value, source):
        if key not in known:
            raise SystemExit(f"error: unknown setting {key!r} in {source}; known: {', '.join(known)}")
        kind = type(getattr(config, key))
        if kind is float and type(value) is int:
            value = float(value)
        if kind is bool and value in (0, 1):
            value = bool(value)
        if type(value) is not kind:
            raise SystemExit(f"error: {key} must be {kind.__name__}, got {value!r} in {source}")
        setattr(config, key, value)

    for arg in argv:
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep:
                raise SystemExit(f"error: write overrides as --key=value, got {arg!r}")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            assign(key, value, arg)
        else:
            if not os.path.isfile(arg):
                raise SystemExit(f"error: no preset file {arg!r}; presets live in config/")
            preset = {}
            with open(arg) as file:
                exec(file.read(), {}, preset)
            for key, value in preset.items():
                assign(key, value, arg)
    return config


def model_config(config):
    names = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in asdict(config).items() if k in names}, num_labels=NUM_LABELS)


def bf16_is_fast(device):
    """bf16 autocast pays on CUDA and on CPUs with bf16 units (AVX512-BF16 or AMX). Elsewhere the CPU
    emulates it: on a 2-core AVX2 machine a config/ship.py step took about 25 s in bf16, 2.5 s in float32."""
    if device.startswith("cuda"):
        return True
    return device == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def learning_rate(config, step):
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def flow_matching_loss(model, video, labels, config, generator, motion_weight=0.0, weight_floor=0.05,
                       frame_level_fraction=0.0, noise_correlation=0.0, min_level=0.0, self_condition=False,
                       chunk_levels=False):
    """Rectified flow on whole clips: one logit-normal noise level per clip (or per frame, for a
    `frame_level_fraction` of the clips; or uniform from `min_level` to 1, for a high-noise expert; or
    per chunk, with `chunk_levels`), label dropout, noise with a `noise_correlation` share common to a
    clip's frames.
    The loss is on the velocity, i.e. on the clean prediction weighted by 1 / level^2, with the weight
    capped at level `weight_floor` so the rare nearly-clean clips do not dominate."""
    B, Fr = video.shape[:2]
    device = video.device
    noise = clip_noise(video.shape, noise_correlation, generator).to(device)

    def logit_normal(*shape):  # the teacher's noise-level distribution, per clip, frame or chunk
        return torch.sigmoid(config.noise_mean + config.noise_std * torch.randn(*shape, generator=generator))

    if min_level > 0:
        # An expert for the high levels only, where a clip's layout and tracks are decided (README, "A second
        # teacher for the high noise levels"); below min_level the sampler hands over to the all-levels teacher.
        levels = (min_level + (1 - min_level) * torch.rand(B, generator=generator))[:, None].expand(B, Fr)
    else:
        levels = logit_normal(B)[:, None].expand(B, Fr)
    drop = (torch.rand(B, generator=generator) < config.label_dropout).to(device)
    labels = torch.where(drop, NUM_LABELS, labels)  # the null label: what guidance contrasts against
    if frame_level_fraction > 0:
        # Some clips get a level per frame (as in Diffusion Forcing): to denoise a frame noisier than its
        # neighbours the net must carry their objects over in time, the skill a teacher whose objects
        # pop in and out lacks. The sampler still gives every frame of a clip the same level. Tried
        # at full length it made the popping worse (README, "Objects that pop in and out"): off by default.
        own_levels = torch.rand(B, generator=generator) < frame_level_fraction
        frame_levels = logit_normal(B, Fr // config.patch_frames).repeat_interleave(config.patch_frames, dim=1)
        levels = torch.where(own_levels[:, None], frame_levels, levels)
    if chunk_levels:
        # For a chunk-causal net (as in Diffusion Forcing): every chunk at its own level, so that it learns to
        # finish a chunk after earlier chunks at any level, which is what a streaming student is asked to do.
        levels = logit_normal(B, Fr // config.chunk_frames).repeat_interleave(config.chunk_frames, dim=1)
    levels = levels.to(device)
    s = levels[:, :, None, None, None]
    noisy = (1 - s) * video + s * noise
    estimate = None
    if self_condition:
        # Self-conditioning (Chen et al., 2022, "Analog Bits"): for half the clips the net first
        # estimates the clean clip without a gradient, then reads that estimate beside the noisy clip;
        # the sampler gives it the previous step's. A small net gets a second look at the tracks it
        # drew, at the price of one more pass for half the batch in training, none in sampling.
        second_look = (torch.rand(B, generator=generator) < 0.5).to(device)
        estimate = torch.zeros_like(noisy)
        with torch.no_grad():
            first = model(noisy[second_look], levels[second_look], labels[second_look]).float()
            estimate[second_look] = noisy[second_look] - s[second_look] * first
    velocity = model(noisy, levels, labels, clean_estimate=estimate).float()
    clean = noisy - s * velocity
    error = (clean - video) / s.clamp(min=weight_floor)
    loss = error.square().mean()
    if motion_weight > 0:
        # The same error seen as motion (flow.py's frame differences, the paper's implicit flow). A
        # quadratic loss of a fixed linear map of the prediction keeps the conditional mean as its
        # minimiser, so the ODE the sampler follows is unchanged; what changes is where a small model
        # spends its capacity: on objects that keep their place and shape from frame to frame.
        loss = loss + motion_weight * frame_differences(error).square().mean()
    return loss


def plot_losses(losses, path, ylabel="flow-matching loss"):
    """losses: a list of floats, or {name: list} for several curves (each smoothed over ~1/50 of its length)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, values in (losses if isinstance(losses, dict) else {"loss": losses}).items():
        if not values:
            continue
        window = max(1, len(values) // 50)
        smooth = torch.tensor(values).unfold(0, window, 1).mean(1)
        line, = ax.plot(values, alpha=0.25)
        ax.plot(range(window - 1, window - 1 + len(smooth)), smooth, color=line.get_color(), label=f"{name} (mean of {window})")
    ax.set(xlabel="step", ylabel=ylabel, yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    config = parse_config(TrainConfig(), argv)
    if config.short_steps > 0 and config.short_frames < 1:
        raise SystemExit(f"error: short_steps={config.short_steps} needs short_frames >= 1 (the clip length of those steps)")
    if not 0 <= config.frame_level_fraction <= 1:
        raise SystemExit(f"error: frame_level_fraction={config.frame_level_fraction} is a fraction of clips; use a value from 0 to 1")
    if not 0 <= config.noise_correlation < 1:
        raise SystemExit(f"error: noise_correlation={config.noise_correlation} is a share of variance; "
                         "use a value from 0 to below 1")
    if not 0 <= config.min_level < 1:
        raise SystemExit(f"error: min_level={config.min_level} is a noise level; use a value from 0 to below 1")
    if config.min_level and config.frame_level_fraction:
        raise SystemExit("error: a high-noise expert's clips share one level; "
                         "use min_level with frame_level_fraction=0")
    if config.causal and (config.min_level or config.frame_level_fraction):
        raise SystemExit("error: causal=1 draws a noise level per chunk itself; use min_level=0 and frame_level_fraction=0")
    if config.causal and any(frames % config.chunk_frames for frames in (config.frames, config.short_frames)):
        raise SystemExit(f"error: causal=1 draws a level per chunk of {config.chunk_frames} frames; make frames "
                         f"({config.frames}) and short_frames ({config.short_frames}) multiples of chunk_frames")
    if config.min_level and not config.init_from:
        raise SystemExit("error: min_level trains the high-noise half of a finished teacher; "
                         "give that teacher as --init_from=PATH (config/ship_expert.py)")
    ddp = "RANK" in os.environ
    if torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    else:
        device = "mps" if torch.backends.mps.is_available() else "cpu"
    if ddp:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if config.threads:
        torch.set_num_threads(config.threads)
    use_bf16 = config.bf16 and bf16_is_fast(device)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if use_bf16 else nullcontext()
    master = rank == 0

    mconfig = model_config(config)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = VideoDiT(mconfig, causal=config.causal).to(device)
    ema = VideoDiT(mconfig, causal=config.causal).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    # fused: one pass over all parameters instead of several small ops per parameter tensor
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay,
                                  fused=True)
    rng = torch.Generator().manual_seed(config.seed)  # all ranks draw the same batch seeds
    step, losses = 0, []
    ckpt_path = os.path.join(config.out_dir, "ckpt.pt")
    if config.resume:
        state, _ = load_checkpoint(ckpt_path, device, expect_config=mconfig)
        was_causal = int(state.get("causal", False))  # the same weights either way: only this flag tells
        if was_causal != config.causal:
            raise SystemExit(f"error: {ckpt_path} was trained with causal={was_causal}; resume with --causal={was_causal}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        step, losses = state["step"], state["losses"]
    elif config.init_from:  # fine-tuning: the run's own checkpoint (--resume) takes precedence
        if os.path.abspath(config.init_from) == os.path.abspath(ckpt_path):
            raise SystemExit(f"error: --init_from={config.init_from} is this run's own checkpoint, which the run would "
                             "overwrite; pick another --out_dir, or continue it with --resume=1")
        state, source_config = load_checkpoint(config.init_from, device, expect_config=mconfig,
                                               settings=("noise_correlation", "self_condition"))
        if state.get("causal") and not (config.causal and state.get("train_config", {}).get("causal")):
            raise SystemExit(f"error: {config.init_from!r} is a causal net; --init_from takes a teacher checkpoint "
                             "(or, with --causal=1, a train.py --causal=1 checkpoint)")
        if "expert" in state:
            raise SystemExit(f"error: {config.init_from!r} holds two networks (a high-noise expert); start from the "
                             "one-network checkpoint it was made from")
        weights = state["ema"]
        if source_config.self_condition != mconfig.self_condition:
            if not mconfig.self_condition:
                raise SystemExit(f"error: {config.init_from!r} is self-conditioned; keep --self_condition=1")
            # the estimate's input weights start at zero: the widened net starts as the teacher it was
            weights = dict(weights, **{"patch_in.weight": F.pad(weights["patch_in.weight"], (0, model.patch_numbers))})
        model.load_state_dict(weights)
        ema.load_state_dict(weights)
    sampler = ema
    if config.min_level:  # an expert's sample GIFs show the two halves together, as they will be used
        if config.resume:  # `state` holds the init_from teacher unless the run resumed
            state, _ = load_checkpoint(config.init_from, device, expect_config=mconfig)
        sampler = LevelExperts(build_model(state, mconfig, device), ema, config.min_level)
    forward_model = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    if config.compile:
        forward_model = torch.compile(forward_model)
    origin = f"the weights of {config.init_from}" if config.init_from and not config.resume else f"step {step}"
    if master:
        kind = "causal net" if config.causal else "teacher"
        print(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, device {device}, "
              f"{world} process(es), {torch.get_num_threads()} thread(s) each, {'bf16 autocast' if use_bf16 else 'float32'}, from {origin}")

    def checkpoint():
        save_checkpoint(dict(model_config=asdict(mconfig), causal=config.causal, train_config=asdict(config),
                             model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                             rng=rng.get_state(), step=step, losses=losses), ckpt_path)
        plot_losses(losses, os.path.join(config.out_dir, "loss.png"))
        labels = torch.arange(8, device=device) % NUM_LABELS
        # (a causal net's samples here denoise all chunks together: a picture of the net, not of a stream)
        video = sample_teacher(sampler, labels, config.frames, config.sample_steps)
        save_gif((video.float().cpu() + 1) / 2, os.path.join(config.out_dir, f"samples_{step:06d}.gif"))

    start = time.time()
    bar = tqdm(total=config.steps, initial=step, disable=not master, dynamic_ncols=True)
    while step < config.steps:
        data_seed, noise_seed = (int(s) * world + rank for s in torch.randint(0, 2 ** 31, (2,), generator=rng))
        frames = config.short_frames if step < config.short_steps else config.frames
        clips = make_clips(config.batch_size, frames, config.image_size, seed=data_seed)  # each rank its own
        video, labels = clips["video"].to(device) * 2 - 1, clips["labels"].to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        with autocast:
            noise_generator = torch.Generator().manual_seed(noise_seed)
            loss = flow_matching_loss(forward_model, video, labels, config, noise_generator,
                                      config.motion_weight, config.weight_floor, config.frame_level_fraction,
                                      config.noise_correlation, min_level=config.min_level,
                                      self_condition=config.self_condition, chunk_levels=config.causal)
        mean_loss = loss.detach().clone()
        if ddp:  # every rank sees the same mean, so a NaN anywhere stops all of them
            dist.all_reduce(mean_loss)
            mean_loss /= world
        if not torch.isfinite(mean_loss):
            raise SystemExit(f"error: loss became {mean_loss.item()} at step {step}; lower --lr or resume from the last checkpoint")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        decay = min(config.ema, (1 + step) / (10 + step))  # short runs: let the EMA catch up early on
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        step += 1
        losses.append(mean_loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", grad=f"{grad_norm.item():.2f}")
        if master and (step % config.eval_interval == 0 or step == config.steps):
            checkpoint()
    bar.close()
    if master:
        final = sum(losses[-100:]) / len(losses[-100:])
        print(f"done: {step} steps in {(time.time() - start) / 60:.1f} min, final loss (mean of last 100) {final:.4f}, "
              f"checkpoint {ckpt_path}")
    if ddp:  # wait for rank 0's last checkpoint: a rank that tears down early can abort the others
        dist.barrier()
        dist.destroy_process_group()

if __name__ == "__main__":
    main(sys.argv[1:])
