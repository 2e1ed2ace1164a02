"""
Noise levels, per-chunk step plans and context rules: the *diagonal* in diagonal distillation.

A few-step student writes a video chunk by chunk. For every chunk it runs a short list of noise
levels ("steps"): predict the clean chunk at level s_j, re-noise that prediction with fresh noise to
s_{j+1}, repeat; the last prediction is the chunk's output (PAPER.md, "Setting").

- A *plan* is one such list per chunk. The paper's idea ("Diagonal schedule"): more steps early,
  fewer later, because later chunks inherit appearance from the well-processed early ones. The
  released code runs 4, 3, 2, 2, ... steps (`diagonal`); the paper's figure shows 5, 4, 3, 2, ...
  (`paper`); Self-Forcing runs the same 4 steps everywhere (`uniform`).
- A *context rule* says what a finished chunk leaves in the KV cache for the chunks after it:
  `clean` re-runs the output at level 0 (one extra pass, Self-Forcing and CausVid), `renoise`
  re-runs it noised to a given level (one extra pass), `last` keeps the K/V of the chunk's last
  denoising input, at level w(0.1) = 0.357 for `diagonal`: no extra pass at all.

    python schedule.py        # draws assets/schedule.png
"""
import math

SHIFT = 5.0
CONTEXT_RULES = ("clean", "renoise", "last")


def warp(level, shift=SHIFT):
    """The shift warp w(s) = k s / (1 + (k - 1) s): spends more of a schedule at high noise."""
    return shift * level / (1 + (shift - 1) * level)


LAST_LEVEL = warp(0.1)  # 0.357: where the diagonal plans end, and the default `renoise` level


def make_plan(num_chunks, first_steps, fall=1, floor=2, grid=(1.0, 0.75, 0.5, 0.25), final=0.1, shift=SHIFT):
    """The general constructor. Chunk k runs max(floor, first_steps - fall * k) steps; a chunk with
    n steps uses the first n - 1 levels of `grid`, then `final`, all warped (one step: just grid[0])."""
    plan = []
    for chunk_index in range(num_chunks):
        steps = max(floor, first_steps - fall * chunk_index)
        if steps < 1 or steps - 1 > len(grid):
            raise ValueError(f"chunk {chunk_index} would need {steps} steps but the grid has {len(grid)} levels "
                             f"(+ the final one); pass a longer grid or fewer steps")
        levels = [*grid[:steps - 1], final] if steps > 1 else [grid[0]]  # one step: straight from noise
        plan.append([warp(level, shift) for level in levels])
    return validate_plan(plan)


def uniform(num_chunks, steps=4, shift=SHIFT):
    """Self-Forcing: the same levels 1, w(0.75), w(0.5), w(0.25) for every chunk (with steps=4)."""
    return [[warp(1 - i / steps, shift) for i in range(steps)] for _ in range(num_chunks)]


def diagonal(num_chunks, shift=SHIFT):
    """The released code: 4, 3, 2, 2, ... steps ending at w(0.1)."""
    return make_plan(num_chunks, 4, grid=(1.0, 0.75, 0.5), shift=shift)


def paper(num_chunks, shift=SHIFT):
    """The paper's figure: 5, 4, 3, 2, 2, ... steps ending at w(0.1)."""
    return make_plan(num_chunks, 5, shift=shift)


PLANS = {"uniform": uniform, "diagonal": diagonal, "paper": paper}


def validate_plan(plan):
    """Every chunk has a step; levels start at 1, fall strictly and stay in (0, 1]."""
    if not plan:
        raise ValueError("a plan needs at least one chunk")
    for chunk_index, levels in enumerate(plan):
        if not levels:
            raise ValueError(f"chunk {chunk_index} has no step; every chunk needs at least one level")
        if not math.isclose(levels[0], 1.0):
            raise ValueError(f"chunk {chunk_index} starts at level {levels[0]:.3f}; a chunk starts from pure noise (1.0)")
        if any(not 0 < level <= 1 for level in levels):
            raise ValueError(f"chunk {chunk_index} has a level outside (0, 1]: {levels}")
        if any(b >= a for a, b in zip(levels, levels[1:])):
            raise ValueError(f"chunk {chunk_index}'s levels must fall strictly: {levels}")
    return plan


def context_level(rule, levels, renoise_level=LAST_LEVEL):
    """The noise level of the extra cache-writing pass after a chunk, or None when there is none."""
    if rule == "clean":
        return 0.0
    if rule == "renoise":
        return renoise_level
    if rule == "last":
        return None
    raise ValueError(f"unknown context rule {rule!r}; use one of {CONTEXT_RULES}")


def forward_passes(plan, rule):
    """Network passes for a whole video (one per step, plus one per chunk unless the rule is `last`)."""
    extra = 0 if context_level(rule, plan[0]) is None else 1
    return sum(len(levels) + extra for levels in plan)


def sequential_passes(plan, rule, fused):
    """Passes that must run one after another. Fusing runs chunk k's last cache-writing pass together
    with chunk k+1's first step (pure noise needs nothing but that cache), saving one per chunk boundary,
    except, with `last`, after chunk 0, whose final pass is its output and runs alone for latency."""
    if not fused:
        return forward_passes(plan, rule)
    return forward_passes(plan, rule) - (len(plan) - 1) + (rule == "last" and len(plan) > 1)


def draw(path="assets/schedule.png", num_chunks=8):
    """The chunk-by-pass grid of two samplers: Self-Forcing (uniform + clean, sequential) and
    diagonal + last (fused). A cell is one chunk in one forward pass, coloured by its noise level."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    setups = [("Self-Forcing style: uniform 4 steps + clean context pass, sequential", uniform(num_chunks), "clean", False),
              ("Diagonal: 4, 3, 2, 2, ... steps + 'last' context, fused", diagonal(num_chunks), "last", True)]
    fig, axes = plt.subplots(2, 1, figsize=(11, 6.2), sharex=True)
    cmap = plt.get_cmap("magma")
    for ax, (title, plan, rule, fused) in zip(axes, setups):
        column, finished = 0, []
        for chunk_index, levels in enumerate(plan):
            if fused and chunk_index > (rule == "last"):
                column -= 1  # the first step shares the previous chunk's last pass (with `last`, not chunk 0's)
            extra = context_level(rule, levels)
            cells = list(levels) + ([] if extra is None else [extra])
            for step, level in enumerate(cells):
                is_context = step == len(levels)
                ax.add_patch(Rectangle((column, chunk_index), 0.92, 0.85, color=cmap(0.15 + 0.8 * (1 - level)),
                                       hatch="//" if is_context else None, ec="white" if is_context else None))
                ax.text(column + 0.46, chunk_index + 0.42, "ctx" if is_context else f"{level:.2f}",
                        ha="center", va="center", fontsize=7, color="white" if level > 0.5 else "black")
                if step == len(levels) - 1:
                    finished.append(column)  # the last denoising step gives the chunk's output
                column += 1
        ax.plot([d + 0.96 for d in finished], [k + 0.42 for k in range(num_chunks)], "o--", color="tab:cyan",
                ms=4, lw=1, label="chunk finished")
        ax.set(xlim=(-0.2, forward_passes(setups[0][1], setups[0][2]) + 0.2), ylim=(num_chunks, -0.2), xlabel="sequential forward pass",
               ylabel="chunk", title=f"{title}: {forward_passes(plan, rule)} passes, "
                                      f"{sequential_passes(plan, rule, fused)} in sequence")
        ax.set_yticks([k + 0.42 for k in range(num_chunks)], range(num_chunks))
        ax.legend(loc="upper right", fontsize=8)
    fig.text(0.01, 0.005, "cell = one chunk in one pass, labelled with its input noise level (dark = noisy); "
             "'ctx' = an extra pass only to write clean K/V into the cache", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    draw()
