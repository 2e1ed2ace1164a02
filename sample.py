"""
Generating video: the undistilled teacher, and the streaming causal student.

Teacher: a bidirectional VideoDiT integrates the rectified-flow ODE dx/ds = v(x, s) from pure noise
(s = 1) to a clean clip (s = 0) with Euler steps, every frame at the same level, with classifier-free
guidance (conditional and unconditional halves in one batch) at the levels up to GUIDANCE_CUTOFF. It
finishes all frames at once. With `eta` > 0 each step draws part of its noise afresh (DDIM's eta; 1 is
ancestral sampling), which trades the ODE's fixed path for one that can correct itself.

Student: a chunk-causal VideoDiT writes the video chunk by chunk (PAPER.md, "Setting"). For each
chunk: start from noise, predict the clean chunk, re-noise it to the next level of the chunk's plan,
repeat; then leave context in the KV cache by the rule of schedule.py. `rollout_chunks` is the *one*
implementation of this: distillation (distill.py) trains through it, with gradient on one exit
step per chunk, and inference streams from it, so training and inference condition on the same
context by construction (PAPER.md, "Exposure-bias alignment").

Noise is addressed, not consumed: the noise of (chunk, step) comes from a generator seeded by
(seed, chunk, step), so any sampler, in any order, draws the same numbers.

`fused_chunks` is the same computation in fewer sequential passes: chunk k+1's first step starts from
pure noise and needs only chunk k's cache, so it can ride in the same forward pass as the pass that
writes chunk k's cache (block-causal attention keeps chunk k blind to chunk k+1). On CUDA each pass
shape is captured once as a CUDA graph and replayed.

    python sample.py                                    # stream from the shipped student
    python sample.py --ckpt assets/teacher.pt --num 8 --label "red circle" --out out
    python sample.py --ckpt STUDENT --plan diagonal --context last --sampler fused --frames 64
"""
import argparse
import math
import os
import time

import torch

from data import LABELS, NUM_LABELS, label_index, save_gif, save_npz
from model import build_model, load_checkpoint
from schedule import CONTEXT_RULES, LAST_LEVEL, PLANS, context_level, validate_plan, warp

GUIDANCE_CUTOFF = 0.7  # classifier-free guidance only at noise levels up to this (see guided_velocity)
CONTEXT_STEP = 1000  # noise address of a chunk's extra context pass (denoising steps use 0, 1, 2, ...)


def pick_device():
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def guided_velocity(model, video, noise_levels, labels, guidance, cutoff=GUIDANCE_CUTOFF, clean_estimate=None):
    """v_uncond + guidance * (v_cond - v_uncond), both halves in one forward pass, on frames whose noise
    level is at most `cutoff`; noisier frames get v_cond alone. Guidance at the noisiest levels, where
    the number and place of objects are decided, added stray objects and pulled every clip of a label
    towards one layout (README, "The teacher"): the guidance interval of Kynkaanniemi et al. (2024)."""
    guided = (noise_levels <= cutoff)[:, :, None, None, None]
    if guidance == 1.0 or not guided.any():
        return model(video, noise_levels, labels, clean_estimate=clean_estimate)
    null = torch.full_like(labels, model.config.num_labels)
    estimate = None if clean_estimate is None else clean_estimate.repeat(2, 1, 1, 1, 1)
    v_cond, v_uncond = model(video.repeat(2, 1, 1, 1, 1), noise_levels.repeat(2, 1),
                             torch.cat([labels, null]), clean_estimate=estimate).chunk(2)
    return torch.where(guided, v_uncond + guidance * (v_cond - v_uncond), v_cond)


def teacher_levels(steps, shift=1.0, start_level=1.0):
    """The teacher's Euler grid: steps + 1 noise levels from 1 down to 0; started at `start_level` < 1
    (sample_teacher's `start`), that level and then the grid's levels below it."""
    levels = [warp(1 - i / steps, shift) for i in range(steps + 1)]
    # the tolerance keeps out a grid level that is the start level up to rounding (1 - 40/50 < 0.2)
    return [start_level] + [level for level in levels if level < start_level - 1e-9]


def teacher_forward_passes(steps, guidance, guidance_cutoff, start_level=1.0):
    """Network evaluations of one sample_teacher call: two on a guided step, one otherwise."""
    return sum(1 + (guidance != 1.0 and level <= guidance_cutoff)
               for level in teacher_levels(steps, start_level=start_level)[:-1])


def clip_noise(shape, correlation, generator):
    """Gaussian noise for whole clips [N, F, ...]: every pixel is N(0, 1), and a `correlation` share of
    its variance is common to all frames of a clip, the "mixed" noise of PYoCo (Ge et al., 2023, "Preserve
    Your Own Correlation"), whose frames start out alike as the frames of a video are."""
    own = torch.randn(shape, generator=generator)
    if correlation == 0:
        return own  # the same numbers as before the option existed
    shared = torch.randn((shape[0], 1, *shape[2:]), generator=generator)
    return math.sqrt(correlation) * shared + math.sqrt(1 - correlation) * own


@torch.no_grad()
def sample_teacher(model, labels, frames, steps=50, guidance=3.0, guidance_cutoff=GUIDANCE_CUTOFF, shift=1.0, seed=0,
                   eta=0.0, start=None, start_level=1.0, second_look=True):
    """Euler sampling of whole clips; returns videos [N, F, 3, H, W] in [-1, 1]. With `eta` > 0 each
    step draws part of its noise afresh (see fresh_noise_step); at 0 it is the plain Euler step.
    With `start` (videos in [-1, 1]) the sampler begins from them noised to `start_level` and runs the
    grid's steps below it (SDEdit, Meng et al., 2022): which levels decide what (README, "Where the wobble is born").
    `second_look=False` hands a self-conditioned teacher zeros instead of its last estimate: the net as
    distill.py's scores read it without their own --second_look."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be between 0 (the ODE) and 1 (ancestral sampling), got {eta}")
    if not 0 <= start_level <= 1 or (start is None and start_level != 1):
        raise ValueError(f"start_level must be between 0 and 1 and needs start clips, got {start_level}")
    c = model.config
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = clip_noise((len(labels), frames, 3, c.image_size, c.image_size), c.noise_correlation, generator).to(device)
    levels = teacher_levels(steps, shift, start_level)
    if start is not None:
        x = (1 - start_level) * start.to(device) + start_level * x
    clean = None  # the last step's estimate of the clean clip, which a self-conditioned teacher reads
    for level, next_level in zip(levels[:-1], levels[1:]):
        noise_levels = torch.full((len(labels), frames), level, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            v = guided_velocity(model, x, noise_levels, labels, guidance, guidance_cutoff, clean).float()
        clean = x - level * v if second_look else None
        if eta == 0:  # the same step as fresh_noise_step at eta 0, without drawing noise it would not use
            x = x + (next_level - level) * v
        else:
            fresh = clip_noise(x.shape, c.noise_correlation, generator).to(device)
            x = fresh_noise_step(x, v, level, next_level, eta, fresh)
    return x


def fresh_noise_step(x, velocity, level, next_level, eta, fresh):
    """One step of DDIM with eta (Song et al., 2021) written for rectified flow, x_s = (1 - s) clean + s noise.

    The step splits x into its estimates of the clean clip and of the noise, and rebuilds x at the
    next level from them, with a part of the noise drawn afresh. At eta 0 nothing is fresh and this is
    the Euler step; at eta 1 the fresh part is the spread of the true posterior q(x_next | x, clean)
    (DDPM's ancestral step), so the sampler follows the reverse SDE and, like the ODE, reaches the data
    distribution as the steps shrink (tested on Gaussian data). Fresh noise lets later steps undo what
    earlier ones got wrong (Karras et al., 2022); README, "Fresh noise at every step", measures it."""
    clean = x - level * velocity
    noise = x + (1 - level) * velocity
    # Forward in time x_level = (1 - level) / (1 - next_level) * x_next + new noise, so `kept` is the
    # correlation of x_level's noise with x_next's. Given x and clean, x_next's noise is known up to a
    # spread of next_level * sqrt(1 - kept^2) (the posterior's); at eta 1 the remaining coefficient,
    # sqrt(next_level^2 - fresh_std^2) = next_level * kept, puts the rest at the posterior mean.
    kept = (1 - level) * next_level / ((1 - next_level) * level)
    fresh_std = eta * next_level * math.sqrt(max(0.0, 1 - kept ** 2))
    return (1 - next_level) * clean + math.sqrt(next_level ** 2 - fresh_std ** 2) * noise + fresh_std * fresh


# ----------------------------------------------------------------------------- the causal student

class NoiseSource:
    """Gaussian noise for a batch, addressed by (chunk, step) under one seed. Drawn on the device
    itself (no host-to-device copy in the sampling loop), so the numbers differ between devices."""

    def __init__(self, seed, batch_size, config, device):
        self.seed, self.device = seed, torch.device(device)
        self.shape = (batch_size, config.chunk_frames, 3, config.image_size, config.image_size)

    def __call__(self, chunk_index, step):
        assert 0 <= step <= CONTEXT_STEP < 1_009, "steps must stay below 1009 to keep addresses apart"
        generator = torch.Generator(self.device).manual_seed((self.seed * 1_000_003 + chunk_index) * 1_009 + step)
        return torch.randn(self.shape, generator=generator, device=self.device)


def renoise(clean, level, noise):
    return clean if level == 0 else (1 - level) * clean + level * noise


class StreamingStep:
    """One forward pass of the student against its KV cache, returning the predicted clean frames.

    Eager (CPU, MPS, or --graph 0): the frame offset is a Python int, so attention covers only the
    cache slots in use. Graph (CUDA): video, noise levels and offset are copied into static buffers,
    the offset is a tensor, and each input length (one chunk, or two when fused) is captured once and
    then replayed. The model, labels and KV cache are baked into the graphs by address: a step
    belongs to one stream (reset its cache to start another).
    """

    def __init__(self, model, kv_cache, labels, graph=False):
        self.model, self.kv_cache, self.labels, self.graph = model, kv_cache, labels, graph
        self.captured = {}

    def forward(self, video, noise_levels, frame_offset):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.device.type == "cuda"):
            velocity = self.model(video, noise_levels, self.labels, frame_offset, self.kv_cache)
        return video - noise_levels[:, :, None, None, None] * velocity.float()

    def __call__(self, video, noise_levels, frame_offset):
        if not self.graph:
            return self.forward(video, noise_levels, frame_offset)
        frames = video.shape[1]
        if frames not in self.captured:
            self.captured[frames] = self.capture(video, noise_levels, frame_offset)
        graph, inputs, output = self.captured[frames]
        inputs[0].copy_(video)
        inputs[1].copy_(noise_levels)
        inputs[2].fill_(frame_offset)
        graph.replay()
        return output.clone()

    def capture(self, video, noise_levels, frame_offset):
        """Warm up on a side stream, then record. The warm-up calls write exactly what the first replay
        will write into this chunk's cache slot, so ("last call wins") they leave no trace."""
        inputs = (video.clone(), noise_levels.clone(), torch.tensor(frame_offset, device=video.device))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.forward(*inputs)
        return graph, inputs, output


def plan_by_name(name, num_chunks):
    if name not in PLANS:
        raise SystemExit(f"error: unknown plan {name!r}; use one of {', '.join(PLANS)}")
    return PLANS[name](num_chunks)


def rollout_chunks(model, plan, context, labels, noise, exit_steps=None, kv_cache=None, renoise_level=LAST_LEVEL):
    """Generate len(plan) chunks one after another and yield each clean chunk [B, chunk_frames, 3, H, W].

    exit_steps: None for inference (every step, no gradient). For training, one step index per chunk:
    that step's prediction is the chunk's output and carries the gradient; the steps before it run
    under no_grad, the steps after it are skipped. The cache then gets what inference would leave:
    with `last`, an early exit re-runs the output re-noised to the chunk's last level (the noise
    inference would have used there), so context sits at the same level in training and inference.
    """
    validate_plan(plan)
    c = model.config
    kv_cache = kv_cache if kv_cache is not None else model.new_cache(len(labels))
    step_fn = StreamingStep(model, kv_cache, labels)
    B = len(labels)
    for chunk_index, levels in enumerate(plan):
        offset = chunk_index * c.chunk_frames
        exit_step = len(levels) - 1 if exit_steps is None else exit_steps[chunk_index]
        x = noise(chunk_index, 0)
        for step in range(exit_step + 1):
            with torch.set_grad_enabled(exit_steps is not None and step == exit_step and torch.is_grad_enabled()):
                clean = step_fn(x, torch.full((B, c.chunk_frames), levels[step], device=x.device), offset)
            if step < exit_step:
                x = renoise(clean, levels[step + 1], noise(chunk_index, step + 1))
        level, address = context_level(context, levels, renoise_level), CONTEXT_STEP
        if level is None and exit_step < len(levels) - 1:
            level, address = levels[-1], len(levels) - 1
        if level is not None:
            with torch.no_grad():
                context_input = renoise(clean.detach(), level, noise(chunk_index, address) if level else None)
                step_fn(context_input, torch.full((B, c.chunk_frames), level, device=x.device), offset)
        yield clean


def rollout(model, plan, context, labels, noise, exit_steps=None, kv_cache=None, renoise_level=LAST_LEVEL):
    """The whole video of `rollout_chunks`: [B, len(plan) * chunk_frames, 3, H, W]."""
    return torch.cat(list(rollout_chunks(model, plan, context, labels, noise, exit_steps, kv_cache, renoise_level)), 1)


@torch.no_grad()
def fused_chunks(model, plan, context, labels, noise, renoise_level=LAST_LEVEL, graph=False, step=None):
    """The same chunks as `rollout_chunks` (inference), in fewer sequential passes: the pass that writes
    chunk k's final cache entry also runs chunk k+1's first step. With `last`, chunk 0's final pass runs
    alone, trading one pass of total time for first-frame latency (fusing would make the first frames
    wait for a pass twice as long). Pass a `StreamingStep` to reuse its cache and captured graphs
    across videos (its cache is reset here)."""
    validate_plan(plan)
    c = model.config
    if context == "last" and any(len(levels) < 2 for levels in plan[1:]):
        raise ValueError("the fused sampler with context 'last' needs at least 2 steps per chunk after the first; "
                         "use --sampler sequential")
    if step is None:
        step = StreamingStep(model, model.new_cache(len(labels)), labels, graph)
    step.kv_cache.reset()
    B, Fc = len(labels), c.chunk_frames
    full = lambda level: torch.full((B, Fc), level, device=labels.device)  # one chunk's noise levels
    pending = None  # (input, level, chunk index, is a denoising step) of the pass that will finish chunk k's cache
    for chunk_index, levels in enumerate(plan):
        x, offset = noise(chunk_index, 0), chunk_index * Fc
        if context == "last" and len(levels) == 1:  # (only chunk 0, see above) its one step is its final pass
            yield step(x, full(levels[0]), offset)
            continue
        if pending is None:
            clean = step(x, full(levels[0]), offset)
        else:
            previous_input, previous_level, previous_chunk, denoising = pending
            both = step(torch.cat([previous_input, x], 1),
                        torch.cat([full(previous_level), full(levels[0])], 1), previous_chunk * Fc)
            if denoising:
                yield both[:, :Fc]
            clean = both[:, Fc:]
        last_in_loop = len(levels) - 1 if context == "last" else len(levels)
        for j in range(1, last_in_loop):
            x = renoise(clean, levels[j], noise(chunk_index, j))
            clean = step(x, full(levels[j]), offset)
        if context == "last":
            j = len(levels) - 1
            pending = (renoise(clean, levels[j], noise(chunk_index, j)), levels[j], chunk_index, True)
            if chunk_index == 0:  # finished alone: the first frames arrive as early as in the sequential sampler
                yield step(pending[0], full(levels[j]), offset)
                pending = None
        else:
            yield clean
            level = context_level(context, levels, renoise_level)
            pending = (renoise(clean, level, noise(chunk_index, CONTEXT_STEP) if level else None), level, chunk_index, False)
    if pending is not None:  # None when the stream is chunk 0 alone under 'last': it finished above
        previous_input, previous_level, previous_chunk, denoising = pending
        clean = step(previous_input, full(previous_level), previous_chunk * Fc)
        if denoising:
            yield clean


@torch.no_grad()
def stream(model, labels, num_frames, plan_name="diagonal", context="last", sampler="fused", seed=0, graph=None):
    """Yield frames [B, chunk_frames, 3, H, W] in [-1, 1] as each chunk finishes, for any length."""
    c = model.config
    device = labels.device
    num_chunks = -(-num_frames // c.chunk_frames)
    plan = plan_by_name(plan_name, num_chunks)
    noise = NoiseSource(seed, len(labels), c, device)
    if graph is None:
        graph = device.type == "cuda"
    if graph and device.type != "cuda":
        raise SystemExit("error: --graph 1 needs CUDA; on this device the step runs eagerly (--graph 0)")
    if sampler == "fused":
        chunks = fused_chunks(model, plan, context, labels, noise, graph=graph)
    elif sampler == "sequential":
        chunks = rollout_chunks(model, plan, context, labels, noise)
    else:
        raise SystemExit(f"error: unknown sampler {sampler!r}; use fused or sequential")
    emitted = 0
    for chunk in chunks:
        take = min(c.chunk_frames, num_frames - emitted)
        emitted += take
        yield chunk[:, :take]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Sample videos from a teacher or stream them from a student.")
    parser.add_argument("--ckpt", default=None, help="default: the shipped student, assets/student.pt")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--frames", type=int, default=None, help="default: the training clip length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default=None, help=f"a name such as 'red circle' or an index 0..{NUM_LABELS - 1}; default: varied")
    parser.add_argument("--out", default="out")
    parser.add_argument("--steps", type=int, default=50, help="teacher: Euler steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="teacher: classifier-free guidance scale")
    parser.add_argument("--guidance_cutoff", type=float, default=GUIDANCE_CUTOFF, help="teacher: guide only at noise levels up to this (1: all)")
    parser.add_argument("--eta", type=float, default=0.0, help="teacher: share of fresh noise per step, 0 (ODE) to 1 (ancestral)")
    parser.add_argument("--plan", default="diagonal", help=f"student: {' | '.join(PLANS)}")
    parser.add_argument("--context", default="last", choices=CONTEXT_RULES, help="student: what the cache keeps")
    parser.add_argument("--sampler", default="fused", choices=("fused", "sequential"))
    parser.add_argument("--graph", type=int, default=None, choices=(0, 1), help="CUDA-graph replay (default: on with CUDA)")
    args = parser.parse_args(argv)
    if args.num < 1 or (args.frames is not None and args.frames < 1):
        raise SystemExit("error: --num and --frames must be at least 1")
    if not 0 <= args.eta <= 1:
        raise SystemExit(f"error: --eta must be between 0 (the ODE) and 1 (ancestral sampling), got {args.eta}")
    if args.ckpt is None:
        args.ckpt = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "student.pt")
        if not os.path.isfile(args.ckpt):
            raise SystemExit(f"error: the shipped student {args.ckpt} is missing; restore it from git or distill one: "
                             f"python distill.py config/distill_cpu.py")

    device = torch.device(pick_device())
    state, config = load_checkpoint(args.ckpt, device)
    model = build_model(state, config, device)
    frames = args.frames or config.frames
    labels = (torch.arange(args.num) % NUM_LABELS if args.label is None
              else torch.full((args.num,), label_index(args.label))).to(device)
    start = time.perf_counter()
    if model.causal:
        chunks = []
        for chunk in stream(model, labels, frames, args.plan, args.context, args.sampler, args.seed,
                            None if args.graph is None else bool(args.graph)):
            chunks.append(chunk.float().cpu())
            if len(chunks) == 1:  # a frame is delivered once it is on the host
                latency = time.perf_counter() - start
        video = torch.cat(chunks, 1)
        how = f"student, {args.plan} plan, {args.context} context, {args.sampler} sampler"
    else:
        video = sample_teacher(model, labels, frames, args.steps, args.guidance, args.guidance_cutoff, seed=args.seed,
                               eta=args.eta).float().cpu()
        latency = time.perf_counter() - start  # a bidirectional model finishes every frame at once
        how = f"teacher, {args.steps} steps, guidance {args.guidance} up to level {args.guidance_cutoff}, eta {args.eta}"
    seconds = time.perf_counter() - start
    video = ((video + 1) / 2).clamp(0, 1)
    save_gif(video, os.path.join(args.out, "stream.gif"))
    save_npz(video, labels.cpu(), os.path.join(args.out, "stream.npz"))
    print(f"{args.num} x {frames} frames ({how}; {', '.join(LABELS[i] for i in labels[:3].tolist())}...) on {device}: "
          f"first frame after {1000 * latency:.0f} ms, {args.num * frames / seconds:.1f} frames/s "
          f"-> {args.out}/stream.gif, {args.out}/stream.npz")


if __name__ == "__main__":
    main()
