"""
Speed, side by side in one process: the undistilled teacher against the streaming student samplers.

Rows (all with the same weights, batch 1):
  teacher              50 Euler steps guided at every step (as the paper's teacher), whole clip, bidirectional
  self-forcing         causal student, uniform 4 steps + a clean context pass per chunk, sequential
  diagonal sequential  causal student, 4/3/2/2... steps, `last` context (no extra pass)
  diagonal fused       the same frames, chunk k's last pass and chunk k+1's first step in one pass
  fused + cuda graph   the fused passes captured once and replayed (CUDA only)

How it measures (PAPER.md, "Speed claims"; DESIGN.md, "How results are measured"): one warm-up round,
then `--repeats` timed rounds, each running every row once in turn; medians reported. NFE counts network evaluations of one chunk
(or one guided clip step as 2); "sequential" counts forward passes that must run one after another.
Latency is wall time from start to the first finished frame (the teacher finishes all frames at
once); FPS is frames over the whole run. "forward only" replays exactly the forward calls the sampler
made (same shapes, same cache offsets) back to back, so sampler time / forward-only time - 1 is what
the sampling loop itself costs. Speed does not depend on training, hence --random.

    python bench.py --random                        # untrained weights at the default size (config/ship.py)
    python bench.py --random --preset config/cpu.py # ... at another preset's size
    python bench.py --ckpt assets/teacher.pt
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch

import sample
from model import VideoDiT, load_checkpoint
from sample import NoiseSource, StreamingStep, fused_chunks, pick_device, plan_by_name, rollout_chunks, sample_teacher
from schedule import forward_passes, sequential_passes
from train import TrainConfig, model_config, parse_config


def cpu_name():
    """The CPU model and the vector instructions torch uses on it: small student passes pay a fixed cost
    per op that varies far more between CPUs than the teacher's large matrix products do."""
    name = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    return f"{name} CPU, {torch.backends.cpu.get_cpu_capability()}"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


TEACHER_STEPS = 50


def time_student(model, plan, context, sampler, labels, step, device, seed=0):
    """One run: (first-frame latency, total time, the forward calls it made). `step` (with its cache and,
    on CUDA, its captured graphs) is reused from run to run, so the warm-up run does the capturing."""
    calls = []
    original = sample.StreamingStep.forward

    def recording_forward(self, video, noise_levels, frame_offset):
        calls.append((video, noise_levels, frame_offset))
        return original(self, video, noise_levels, frame_offset)
    noise = NoiseSource(seed, 1, model.config, device)
    sample.StreamingStep.forward = recording_forward
    try:
        sync(device)
        start = time.perf_counter()
        step.kv_cache.reset()
        chunks = (fused_chunks(model, plan, context, labels, noise, step=step) if sampler == "fused"
                  else rollout_chunks(model, plan, context, labels, noise, kv_cache=step.kv_cache))
        with torch.no_grad():
            next(chunks).cpu()  # a frame is delivered once it is on the host
            latency = time.perf_counter() - start
            for _ in chunks:
                pass
        sync(device)
        total = time.perf_counter() - start
    finally:
        sample.StreamingStep.forward = original
    return latency, total, calls


def time_forward_only(model, calls, labels, device):
    """The same forward passes back to back, with nothing else in between."""
    step = StreamingStep(model, model.new_cache(len(labels)), labels)
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        for video, noise_levels, frame_offset in calls:
            step.forward(video, noise_levels, frame_offset)
        sync(device)
    return time.perf_counter() - start


def time_teacher(model, labels, frames, device):
    sync(device)
    start = time.perf_counter()
    sample_teacher(model, labels, frames, steps=TEACHER_STEPS, guidance=3.0, guidance_cutoff=1.0)
    sync(device)
    total = time.perf_counter() - start
    return total, total


def main(argv=None):
    parser = argparse.ArgumentParser(description="Teacher vs student sampling speed, side by side.")
    parser.add_argument("--random", action="store_true", help="untrained weights at the default model size")
    parser.add_argument("--preset", default=None, help="with --random: take the model size from this preset")
    parser.add_argument("--ckpt", default=None, help="a checkpoint whose weights (and size) to use")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=None, help="default: the training clip length (16)")
    args = parser.parse_args(argv)
    if args.random == (args.ckpt is not None):
        raise SystemExit("error: pass either --random or --ckpt PATH")
    if args.preset and not args.random:
        raise SystemExit("error: --preset sets the size of --random weights; a --ckpt brings its own size")
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be at least 1 (the timed rounds after the warm-up), got {args.repeats}")
    device = torch.device(pick_device())
    if args.random:
        config = model_config(parse_config(TrainConfig(), [args.preset] if args.preset else []))
        torch.manual_seed(0)
        weights = VideoDiT(config).state_dict()
    else:
        state, config = load_checkpoint(args.ckpt, device)
        weights = state["ema"]
    teacher = VideoDiT(config, causal=False).to(device).eval().requires_grad_(False)
    student = VideoDiT(config, causal=True).to(device).eval().requires_grad_(False)
    teacher.load_state_dict(weights)
    student.load_state_dict(weights)
    frames = args.frames or config.frames
    if frames < 1 or frames % config.chunk_frames:
        raise SystemExit(f"error: --frames must be a positive multiple of the chunk length ({config.chunk_frames}) so "
                         f"that teacher and students make the same frames, got {frames}")
    num_chunks = frames // config.chunk_frames
    labels = torch.tensor([0], device=device)

    rows = [("teacher", None, None, None, False),
            ("self-forcing", plan_by_name("uniform", num_chunks), "clean", "sequential", False),
            ("diagonal sequential", plan_by_name("diagonal", num_chunks), "last", "sequential", False),
            ("diagonal fused", plan_by_name("diagonal", num_chunks), "last", "fused", False)]
    if device.type == "cuda":
        rows.append(("fused + cuda graph", plan_by_name("diagonal", num_chunks), "last", "fused", True))

    # Rows take turns run by run, so a slow phase of a shared machine hits every row alike.
    steps = {name: StreamingStep(student, student.new_cache(1), labels, graph) for name, *_, graph in rows}
    runs = {name: [] for name, *_ in rows}
    forward = {name: [] for name, *_ in rows}
    for repeat in range(args.repeats + 1):  # the first round is the warm-up
        for name, plan, context, sampler, graph in rows:
            if plan is None:
                latency, total = time_teacher(teacher, labels, frames, device)
            else:
                latency, total, calls = time_student(student, plan, context, sampler, labels, steps[name], device)
                if repeat > 0 and not graph:
                    forward[name].append(time_forward_only(student, calls, labels, device))
            if repeat > 0:
                runs[name].append((latency, total))
    results = {}
    for name, plan, context, sampler, graph in rows:
        latency = statistics.median(r[0] for r in runs[name])
        total = statistics.median(r[1] for r in runs[name])
        results[name] = dict(
            nfe=2 * TEACHER_STEPS if plan is None else forward_passes(plan, context),
            sequential=TEACHER_STEPS if plan is None else sequential_passes(plan, context, sampler == "fused"),
            latency_ms=1000 * latency, total_ms=1000 * total, fps=frames / total,
            forward_ms=1000 * statistics.median(forward[name]) if forward[name] else float("nan"))
    for r in results.values():
        r["latency_x_teacher"] = results["teacher"]["latency_ms"] / r["latency_ms"]
        r["total_x_teacher"] = results["teacher"]["total_ms"] / r["total_ms"]
        r["latency_x_self_forcing"] = results["self-forcing"]["latency_ms"] / r["latency_ms"]
        r["total_x_self_forcing"] = results["self-forcing"]["total_ms"] / r["total_ms"]

    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: {config.image_size}x{config.image_size}, patch {config.patch_size} x {config.patch_frames} frames, "
          f"width {config.width}, depth {config.depth}, {'random' if args.random else args.ckpt} weights; clip {frames} frames "
          f"in chunks of {config.chunk_frames}; batch 1")
    print(f"method: 1 warm-up round then {args.repeats} timed rounds (each round runs every row once, in turn), medians; "
          f"latency = start to first finished frame; forward only = the same forward calls replayed back to back")
    header = ["NFE", "sequential", "latency ms", "FPS", "lat x teacher", "total x teacher", "lat x SF", "total x SF", "forward ms"]
    keys = ["nfe", "sequential", "latency_ms", "fps", "latency_x_teacher", "total_x_teacher",
            "latency_x_self_forcing", "total_x_self_forcing", "forward_ms"]
    print(f"{'':22s}" + "".join(f"{h:>16s}" for h in header))
    for row, r in results.items():
        print(f"{row:22s}" + "".join(f"{r[k]:16.1f}" if isinstance(r[k], float) else f"{r[k]:16d}" for k in keys))
    fused = results["fused + cuda graph" if device.type == "cuda" else "diagonal fused"]
    eager_fused = results["diagonal fused"]
    print(json.dumps(dict(
        device=name,
        latency_speedup_vs_teacher=round(fused["latency_x_teacher"], 2),
        total_speedup_vs_teacher=round(fused["total_x_teacher"], 2),
        total_speedup_vs_self_forcing=round(fused["total_x_self_forcing"], 3),
        student_fps=round(fused["fps"], 1),
        sampler_overhead=round(eager_fused["total_ms"] / eager_fused["forward_ms"] - 1, 4))))


if __name__ == "__main__":
    main()
