"""
VideoDiT: a small diffusion transformer for video, full or chunk-causal, with a KV cache.

The paper turns a bidirectional video diffusion transformer (Wan2.1) into a *block-causal* student
that writes a video chunk by chunk, attending to earlier chunks through a KV cache (PAPER.md,
"Setting"). This file is both: `causal=False` is the teacher, `causal=True` the student.

- Tokens: every frame is cut into `patch_size` x `patch_size` patches, frame after frame; with
  `patch_frames` > 1 a token spans that many frames (a tubelet, as a video VAE's latent frame spans
  several video frames: Wan2.1's spans 4), which halves the tokens at 2 and ties neighbouring frames
  together (for our teacher: a step 2.4x faster, but worse at equal steps; README, "Tokens of two
  frames").
- Positions: fixed 2D sin-cos added to the tokens (so the net knows where the walls are), and
  rotary positions in (time, row, column) inside attention. Rotary attention depends on time
  *differences*, so a stream can run past the training length (only the sink chunk, never evicted,
  ends up further back than anything seen in training).
- Conditioning: adaLN-Zero on a *per-frame* noise level plus the clip's label, because the
  streaming schedules give each chunk its own noise level.
- Attention mask: a causal query in chunk q sees a key in chunk c if c <= q and c is a sink chunk or
  one of the `window_chunks` most recent (q - window < c); a bidirectional one (the teacher) sees
  every filled slot.
- KV cache: static buffers, written at tensor offsets (no `.item()`, so CUDA-graph capture works);
  a second call for the same chunk overwrites its slot ("last call wins"); a ring of slots after the
  sink keeps memory bounded on endless streams.
"""
import math
import os
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    image_size: int = 32
    patch_size: int = 4
    frames: int = 16           # training clip length
    chunk_frames: int = 2      # frames generated together by the causal student
    patch_frames: int = 1      # frames per token (a tubelet); chunk_frames must be a multiple of it
    noise_correlation: float = 0.0  # teacher only: share of its noise common to a clip's frames (sample.clip_noise)
    self_condition: bool = False    # teacher only: also reads its own last estimate of the clean clip (train.py)
    width: int = 128
    depth: int = 4
    heads: int = 4
    num_labels: int = 18       # the null label (for guidance) is index num_labels
    window_chunks: int = 7     # most recent chunks a causal query sees (itself included)
    sink_chunks: int = 1       # first chunks that are never evicted


def chunk_visibility(query_chunks, key_chunks, causal, window_chunks, sink_chunks):
    """Boolean [Q, K] mask: may a query of chunk q attend a key of chunk c? (-1 marks an empty slot)"""
    q, c = query_chunks[:, None], key_chunks[None, :]
    if not causal:
        return (c >= 0).expand(len(query_chunks), -1)
    recent = (c > q - window_chunks) | (c < sink_chunks)
    return (c >= 0) & (c <= q) & recent


def sincos(positions, dim, base=10000.0):
    """Sin-cos features of integer positions: [..., dim]."""
    freqs = torch.exp(-math.log(base) * torch.arange(0, dim, 2, device=positions.device) / dim)
    angles = positions[..., None].float() * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Rotary3D(nn.Module):
    """Rotary embedding in (time, row, column); the head dimension is split between the three axes."""

    def __init__(self, head_dim, base=100.0):
        super().__init__()
        spatial = (head_dim // 3) // 2 * 2
        self.dims = (head_dim - 2 * spatial, spatial, spatial)
        self.base = base

    def forward(self, positions):  # positions [L, 3] -> complex rotations [L, head_dim // 2]
        parts = []
        for axis, dim in enumerate(self.dims):
            freqs = torch.exp(-math.log(self.base) * torch.arange(0, dim, 2, device=positions.device) / dim)
            parts.append(positions[:, axis, None].float() * freqs)
        angles = torch.cat(parts, dim=-1)
        return torch.polar(torch.ones_like(angles), angles)  # once per forward pass, shared by every layer

    @staticmethod
    def rotate(x, rotary):  # x [B, H, L, D], rotary [L, D/2] complex; rotates pairs (0,1), (2,3), ...
        # a pair (a, b) read as the complex number a + ib is rotated by one complex multiplication
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * rotary).flatten(-2).to(x.dtype)


class KVCache:
    """Static K/V buffers for streaming. Slot layout: sink chunks, then a ring of window + 1 chunks.

    The ring has one chunk more than the window so a fused call (chunk k's last step together with
    chunk k+1's first) never evicts a chunk that chunk k may still see. What is visible is decided by
    `chunk_visibility` on the chunk index stored per slot, never by the slot layout.
    """

    def __init__(self, config, batch_size, device, dtype=torch.float32):
        c = config
        self.config = c
        self.tokens_per_chunk = c.chunk_frames // c.patch_frames * (c.image_size // c.patch_size) ** 2
        self.num_slots = c.sink_chunks + c.window_chunks + 1
        head_dim = c.width // c.heads
        shape = (c.depth, batch_size, c.heads, self.num_slots * self.tokens_per_chunk, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_chunk = torch.full((self.num_slots * self.tokens_per_chunk,), -1, device=device, dtype=torch.long)

    def token_slots(self, chunks):
        """Cache rows of every token of the given chunk indices (a tensor), in order."""
        c = self.config
        slot = torch.where(chunks < c.sink_chunks, chunks,
                           c.sink_chunks + (chunks - c.sink_chunks) % (c.window_chunks + 1))
        rows = slot[:, None] * self.tokens_per_chunk + torch.arange(self.tokens_per_chunk, device=chunks.device)
        return rows.flatten()

    def reset(self):
        """Forget every chunk (the buffers stay where they are, so captured CUDA graphs stay valid)."""
        self.slot_chunk.fill_(-1)

    def write(self, layer, rows, keys, values):
        # detached: gradients never flow into earlier chunks through the cache (as in Self-Forcing)
        self.keys[layer].index_copy_(2, rows, keys.detach().to(self.keys.dtype))
        self.values[layer].index_copy_(2, rows, values.detach().to(self.values.dtype))


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)
        self.q_norm = nn.RMSNorm(config.width // config.heads)
        self.k_norm = nn.RMSNorm(config.width // config.heads)

    def forward(self, x, rotary, mask, kv_cache=None, layer=0, cache_rows=None):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q = Rotary3D.rotate(self.q_norm(q), rotary)
        k = Rotary3D.rotate(self.k_norm(k), rotary)
        if kv_cache is not None:  # write this call's keys/values, then attend to the whole cache
            kv_cache.write(layer, cache_rows, k, v)
            used_rows = mask.shape[1]
            cached_k = kv_cache.keys[layer, :, :, :used_rows].to(q.dtype)
            cached_v = kv_cache.values[layer, :, :, :used_rows].to(q.dtype)
            if torch.is_grad_enabled():  # training through a rollout: this call's own K/V keep their gradient
                k, v = cached_k.index_copy(2, cache_rows, k), cached_v.index_copy(2, cache_rows, v)
            else:
                k, v = cached_k, cached_v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        w = config.width
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.GELU(approximate="tanh"), nn.Linear(4 * w, w))
        self.modulation = nn.Linear(w, 6 * w)  # adaLN-Zero: shift, scale, gate for attention and MLP
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x, cond, rotary, mask, kv_cache=None, layer=0, cache_rows=None):
        # x [B, F, P, D], cond [B, F, D] for F token frames, each with its own noise level, hence modulation
        B, Fr, P, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond))[:, :, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        h = self.attn(h.reshape(B, Fr * P, D), rotary, mask, kv_cache, layer, cache_rows).view(B, Fr, P, D)
        x = x + gate1 * h
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class VideoDiT(nn.Module):
    def __init__(self, config, causal=False):
        super().__init__()
        self.config, self.causal = config, causal
        c, w = config, config.width
        if c.chunk_frames % c.patch_frames or c.frames % c.patch_frames:
            raise ValueError(f"patch_frames={c.patch_frames} must divide chunk_frames={c.chunk_frames} and frames={c.frames}")
        self.grid = c.image_size // c.patch_size
        self.patch_numbers = 3 * c.patch_frames * c.patch_size ** 2  # pixel values in one token
        self.patch_in = nn.Linear(self.patch_numbers * (1 + c.self_condition), w)
        self.noise_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.label_embed = nn.Embedding(c.num_labels + 1, w)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False)
        self.final_modulation = nn.Linear(w, 2 * w)
        self.patch_out = nn.Linear(w, self.patch_numbers)
        for layer in (self.final_modulation, self.patch_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.rotary = Rotary3D(w // c.heads)
        rows, cols = torch.meshgrid(torch.arange(self.grid), torch.arange(self.grid), indexing="ij")
        spatial = torch.cat([sincos(rows.flatten(), w // 2), sincos(cols.flatten(), w // 2)], dim=-1)
        self.register_buffer("spatial_embed", spatial, persistent=False)
        self.register_buffer("spatial_pos", torch.stack([rows.flatten(), cols.flatten()], -1), persistent=False)

    def patchify(self, video):  # [B, F, 3, H, W] -> [B, F/t, P, t*3*p*p], t = patch_frames
        B, Fr, C, H, W = video.shape
        t, p, g = self.config.patch_frames, self.config.patch_size, self.grid
        tubelets = video.view(B, Fr // t, t, C, g, p, g, p).permute(0, 1, 4, 6, 2, 3, 5, 7)
        return tubelets.reshape(B, Fr // t, g * g, self.patch_numbers)

    def unpatchify(self, tokens):  # [B, F/t, P, t*3*p*p] -> [B, F, 3, H, W]
        B, token_frames = tokens.shape[:2]
        t, p, g = self.config.patch_frames, self.config.patch_size, self.grid
        frames = tokens.view(B, token_frames, g, g, t, 3, p, p).permute(0, 1, 4, 5, 2, 6, 3, 7)
        return frames.reshape(B, token_frames * t, 3, g * p, g * p)

    def forward(self, video, noise_levels, labels, frame_offset=0, kv_cache=None, clean_estimate=None):
        """Predict the velocity `noise - clean` for every frame (so clean = video - level * velocity).

        video [B, F, 3, H, W] at per-frame noise_levels [B, F] in [0, 1] (the frames of one token
        share a level: the first one's is used); labels [B].
        Training and the teacher: a whole clip, no cache. Streaming (causal only): a few whole chunks
        starting at frame `frame_offset`, attending to the `kv_cache`. An int offset lets eager code
        attend only to the cache slots in use so far; a 0-d tensor offset keeps every shape static
        (the whole cache, masked) so the call can be captured in a CUDA graph and replayed.
        A self-conditioned net also reads `clean_estimate` [B, F, 3, H, W], zeros when not given.
        """
        c = self.config
        B, Fr = video.shape[:2]
        device = video.device
        if Fr % c.patch_frames:
            raise ValueError(f"{Fr} frames cannot be cut into tokens of patch_frames={c.patch_frames} frames")
        frame_index = frame_offset + torch.arange(Fr, device=device)
        first_frames = frame_index[::c.patch_frames]  # each token frame's first frame
        token_frame_index = first_frames // c.patch_frames  # a token's time position
        query_chunks = (first_frames // c.chunk_frames).repeat_interleave(self.grid ** 2)
        positions = torch.cat([token_frame_index.repeat_interleave(self.grid ** 2)[:, None],
                               self.spatial_pos.repeat(len(token_frame_index), 1)], dim=-1)
        rotary = self.rotary(positions)
        cache_rows, mask = None, None  # the teacher sees every token: no mask, and CPU attention is faster without one
        if self.causal or kv_cache is not None:
            key_chunks = query_chunks
            if kv_cache is not None:
                cache_rows = kv_cache.token_slots(frame_index[::c.chunk_frames] // c.chunk_frames)
                kv_cache.slot_chunk.index_copy_(0, cache_rows, query_chunks)
                used_slots = kv_cache.num_slots
                if isinstance(frame_offset, int):  # streams start at chunk 0 and fill slots in order until the ring wraps
                    used_slots = min(used_slots, (frame_offset + Fr - 1) // c.chunk_frames + 1)
                key_chunks = kv_cache.slot_chunk[:used_slots * kv_cache.tokens_per_chunk]
            visible = chunk_visibility(query_chunks, key_chunks, self.causal, c.window_chunks, c.sink_chunks)
            # an additive mask, built once per pass: CPU attention converts a boolean mask in every
            # layer, which cost more than the attention itself at our sizes
            mask = torch.zeros(visible.shape, device=device).masked_fill(~visible, float("-inf"))

        tokens = self.patchify(video)
        if c.self_condition:
            estimate = torch.zeros_like(video) if clean_estimate is None else clean_estimate.to(video.dtype)
            tokens = torch.cat([tokens, self.patchify(estimate)], dim=-1)
        x = self.patch_in(tokens) + self.spatial_embed
        token_levels = noise_levels[:, ::c.patch_frames]
        cond = self.noise_mlp(sincos(token_levels * 1000, c.width)) + self.label_embed(labels)[:, None]
        for layer, block in enumerate(self.blocks):
            x = block(x, cond, rotary, mask, kv_cache, layer, cache_rows)
        shift, scale = self.final_modulation(F.silu(cond))[:, :, None].chunk(2, dim=-1)
        clean = self.unpatchify(self.patch_out(self.final_norm(x) * (1 + scale) + shift))
        # The net predicts the clean frames and we return the velocity they imply. With 8x8 patches
        # (config/cpu.py) a patch holds more numbers (3 * 8 * 8 = 192) than a token (width 128):
        # noise cannot pass through that bottleneck, clean frames (a few shapes) can, so predicting
        # velocity directly left speckle all over our samples (the argument of "Back to Basics: Let
        # Denoising Generative Models Denoise", Li & He 2025).
        # (the level is floored only to avoid 0 / 0 for clean context passes; train.py caps the loss
        # weight separately)
        return (video - clean) / noise_levels.clamp(min=1e-4)[:, :, None, None, None]

    def new_cache(self, batch_size):
        device = next(self.parameters()).device
        return KVCache(self.config, batch_size, device, torch.bfloat16 if device.type == "cuda" else torch.float32)


class LevelExperts(nn.Module):
    """A teacher in two halves by noise level, as eDiff-I (Balaji et al., 2022) and Wan2.2's high- and
    low-noise experts: clips above `boundary` go to `high`, a copy fine-tuned on those levels alone,
    the rest to `low`, the all-levels teacher. The high levels decide where objects are and how they
    move, the low ones only finish them (README, "Where the wobble is born"); a net of the same size
    that spends all its capacity there pops objects in and out less. A teacher's levels are one per clip."""

    def __init__(self, low, high, boundary):
        super().__init__()
        self.low, self.high, self.boundary = low, high, boundary
        self.config, self.causal = low.config, False

    def forward(self, video, noise_levels, labels, clean_estimate=None):
        high = noise_levels[:, 0] > self.boundary
        if high.all() or not high.any():
            return (self.high if high.all() else self.low)(video, noise_levels, labels, clean_estimate=clean_estimate)
        velocity = video.new_empty(video.shape)
        for part, net in ((high, self.high), (~high, self.low)):
            estimate = None if clean_estimate is None else clean_estimate[part]
            velocity[part] = net(video[part], noise_levels[part], labels[part], clean_estimate=estimate)
        return velocity


def save_checkpoint(state, path):
    """Write atomically: a crash mid-write leaves the previous checkpoint intact. The temporary name is
    per process, so two runs making one shared file (distill.py's ODE pairs) never write into one file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename, so not even a power cut leaves half a file
    os.replace(temporary, path)


def load_checkpoint(path, device="cpu", expect_config=None, settings=("noise_correlation",)):
    """Load a checkpoint, failing with one line that says what to do; the config fields in `settings`
    may differ from `expect_config`."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: no checkpoint at {path!r}; train one first (python train.py config/cpu.py) or fix the path")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        config = ModelConfig(**state["model_config"])
    except Exception as e:
        raise SystemExit(f"error: {path!r} is not a checkpoint of this codebase ({type(e).__name__}: {e})")
    # the noise a teacher trains on is a training setting, not its shape: a run may take the weights of
    # one trained on other noise (PYoCo fine-tunes a model of independent noise onto shared noise)
    diff = {k: (v, getattr(expect_config, k)) for k, v in asdict(config).items()
            if expect_config is not None and getattr(expect_config, k) != v and k not in settings}
    if diff:
        raise SystemExit(f"error: {path!r} was made with another model config (checkpoint vs now: {diff}); "
                         f"use a fresh out_dir or the matching preset")
    return state, config


def export_weights(checkpoint_path, out_path, expert_path=None):
    """A small file to ship: the model config and the EMA weights only (no optimiser, no raw weights);
    with `expert_path`, a high-noise expert's EMA weights too (train.py --min_level; LevelExperts)."""
    state, config = load_checkpoint(checkpoint_path)
    keep = {k: state[k] for k in ("model_config", "causal", "ema", "step", "train_config") if k in state}
    if expert_path:
        if state.get("causal") or state.get("train_config", {}).get("min_level"):
            raise SystemExit(f"error: {checkpoint_path!r} is no all-levels teacher; give it first, the expert third")
        expert, _ = load_checkpoint(expert_path, expect_config=config)
        boundary = expert.get("train_config", {}).get("min_level", 0)
        if expert.get("causal") or not boundary:
            raise SystemExit(f"error: {expert_path!r} is no high-noise expert; train one with "
                             "python train.py config/ship.py config/ship_expert.py")
        keep["expert"] = dict(ema=expert["ema"], boundary=boundary, train_config=expert["train_config"])
    save_checkpoint(keep, out_path)
    print(f"wrote {out_path}: step {keep.get('step')}, {os.path.getsize(out_path) / 2 ** 20:.1f} MB")


def build_model(state, config, device="cpu", weights="ema"):
    """A VideoDiT in eval mode with the checkpoint's `ema` (default) or raw `model` weights; a teacher
    that carries a high-noise expert comes back as LevelExperts."""
    model = VideoDiT(config, causal=state.get("causal", False)).to(device)
    model.load_state_dict(state[weights])
    if "expert" in state and weights == "ema":
        high = VideoDiT(config).to(device)
        high.load_state_dict(state["expert"]["ema"])
        model = LevelExperts(model, high, state["expert"]["boundary"])
    return model.eval().requires_grad_(False)


if __name__ == "__main__":
    import sys
    if len(sys.argv) not in (3, 4):
        raise SystemExit("usage: python model.py TRAINING_CHECKPOINT OUT.pt [HIGH_NOISE_EXPERT_CHECKPOINT]   "
                         "(keeps the config and EMA weights)")
    export_weights(*sys.argv[1:])
