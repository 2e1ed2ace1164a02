"""The model's mechanisms: chunk-causal mask, KV-cache streaming, last call wins, rolling window,
each for tokens of one frame and for tubelets of two (patch_frames=2)."""
import dataclasses

import pytest
import torch

from model import ModelConfig, VideoDiT, chunk_visibility

CONFIG = ModelConfig(image_size=16, patch_size=4, frames=8, chunk_frames=2, width=32, depth=2, heads=2,
                     num_labels=4, window_chunks=3, sink_chunks=1)
TUBELETS = dataclasses.replace(CONFIG, patch_frames=2)
BOTH = pytest.mark.parametrize("config", [CONFIG, TUBELETS], ids=["frame_tokens", "tubelets"])


def make_model(causal=True, config=CONFIG, seed=0):
    torch.manual_seed(seed)
    model = VideoDiT(config, causal=causal)
    for p in model.parameters():  # adaLN-Zero starts as the identity; randomise so every path matters
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def clip(frames, seed=1, config=CONFIG):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(2, frames, 3, config.image_size, config.image_size, generator=g)
    # away from 0 (the velocity divides by the level); the frames of a token share a level
    levels = 0.2 + 0.8 * torch.rand(2, frames // config.patch_frames, generator=g)
    levels = levels.repeat_interleave(config.patch_frames, dim=1)
    return video, levels, torch.tensor([0, 3])


@BOTH
def test_causal_mask_later_chunks_never_change_earlier_outputs(config):
    model = make_model(config=config)
    video, levels, labels = clip(8, config=config)
    out = model(video, levels, labels)
    changed = video.clone()
    changed[:, 4:] += torch.randn_like(changed[:, 4:])            # chunks 2 and 3
    out_changed = model(changed, levels, labels)
    assert torch.equal(out[:, :4], out_changed[:, :4])
    assert (out[:, 4:] - out_changed[:, 4:]).abs().max() > 1e-3


@BOTH
def test_causal_mask_earlier_chunk_changes_later_outputs(config):
    model = make_model(config=config)
    video, levels, labels = clip(8, config=config)
    changed = video.clone()
    changed[:, :2] += 1.0                                          # chunk 0 only
    diff = (model(video, levels, labels) - model(changed, levels, labels)).abs().amax(dim=(0, 2, 3, 4))
    assert (diff > 1e-3).all()                                     # every frame, chunk 0's own included


def test_bidirectional_teacher_sees_the_future():
    model = make_model(causal=False)
    video, levels, labels = clip(8)
    changed = video.clone()
    changed[:, 6:] += 1.0
    assert (model(video, levels, labels)[:, :2] - model(changed, levels, labels)[:, :2]).abs().max() > 1e-3


def stream(model, video, levels, labels, chunks_per_call=1, static=False):
    """Feed the clip through the KV cache a few chunks at a time; return the concatenated outputs.
    static: pass offsets as tensors (whole cache, CUDA-graph style) instead of ints (used slots only)."""
    cache = model.new_cache(len(video))
    step = chunks_per_call * model.config.chunk_frames
    outs = []
    for start in range(0, video.shape[1], step):
        offset = torch.tensor(start) if static else start
        outs.append(model(video[:, start:start + step], levels[:, start:start + step], labels, offset, cache))
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("chunks_per_call", [1, 2])
@BOTH
def test_streaming_through_cache_equals_full_causal_forward(chunks_per_call, static, config):
    model = make_model(config=config)
    video, levels, labels = clip(8, config=config)  # 4 chunks, window 3 + sink 1: nothing evicted yet
    full = model(video, levels, labels)
    streamed, _ = stream(model, video, levels, labels, chunks_per_call, static)
    assert (full - streamed).abs().max() < 1e-5


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("chunks_per_call", [1, 2])
@BOTH
def test_streaming_after_eviction_equals_windowed_reference(chunks_per_call, static, config):
    model = make_model(config=config)
    video, levels, labels = clip(20, config=config)  # 10 chunks: chunks 1..6 fall out of the last chunk's window
    full = model(video, levels, labels)      # the reference: one causal pass under the same sink + window rule
    streamed, cache = stream(model, video, levels, labels, chunks_per_call, static)
    assert (full - streamed).abs().max() < 1e-5
    assert cache.keys.shape[3] == (1 + 3 + 1) * cache.tokens_per_chunk  # sink + window + 1 spare, not 10 chunks


def test_window_rule_by_hand():
    # chunk 9 with window 3 and 1 sink chunk sees the sink (0) and chunks 7, 8, 9
    mask = chunk_visibility(torch.tensor([9]), torch.arange(10), True, 3, 1)
    assert mask.tolist() == [[True, False, False, False, False, False, False, True, True, True]]
    # an empty slot (-1) is never visible
    assert not chunk_visibility(torch.tensor([2]), torch.tensor([-1]), True, 3, 1).any()


def test_evicted_chunks_are_ignored_and_the_sink_is_not():
    model = make_model()
    video, levels, labels = clip(20)
    _, cache = stream(model, video, levels, labels)                  # chunks 0..9 written
    rerun = lambda: model(video[:, 18:], levels[:, 18:], labels, 18, cache)  # chunk 9 again
    before = rerun()
    stale = cache.token_slots(torch.tensor([6]))                     # still in the ring, outside the window
    cache.keys[:, :, :, stale] += 3.0
    assert torch.equal(rerun(), before)
    sink = cache.token_slots(torch.tensor([0]))
    cache.keys[:, :, :, sink] += 3.0
    assert (rerun() - before).abs().max() > 1e-3


@BOTH
def test_last_call_wins(config):
    model = make_model(config=config)
    video, levels, labels = clip(4, config=config)
    cache = model.new_cache(2)
    zero = 0
    model(video[:, :2] + 5.0, levels[:, :2], labels, zero, cache)   # a first, different call for chunk 0
    model(video[:, :2], levels[:, :2], labels, zero, cache)         # the second call overwrites it
    second = model(video[:, 2:], levels[:, 2:], labels, 2, cache)
    full = model(video, levels, labels)
    assert (second - full[:, 2:]).abs().max() < 1e-5


def test_cache_buffers_are_static_while_streaming():
    model = make_model()
    video, levels, labels = clip(40)
    cache = model.new_cache(2)
    pointers = (cache.keys.data_ptr(), cache.values.data_ptr(), cache.keys.shape)
    for start in range(0, 40, 2):
        model(video[:, start:start + 2], levels[:, start:start + 2], labels, torch.tensor(start), cache)
        assert (cache.keys.data_ptr(), cache.values.data_ptr(), cache.keys.shape) == pointers


def test_tubelets_cut_and_reassemble_frames_exactly():
    model = make_model(causal=False, config=TUBELETS)
    video = torch.randn(2, 8, 3, 16, 16)
    tokens = model.patchify(video)                                 # [B, 4 token frames, 16 patches, 2*3*4*4]
    assert tokens.shape == (2, 4, 16, 96)
    # token frame 1, patch (row 2, column 3): frames 2 and 3, pixels 8..11 x 12..15, (frame, colour, y, x)
    assert torch.equal(tokens[:, 1, 2 * 4 + 3], video[:, 2:4, :, 8:12, 12:16].flatten(1))
    assert torch.equal(model.unpatchify(tokens), video)


def test_tubelets_that_do_not_fit_the_chunks_are_refused():
    with pytest.raises(ValueError, match="patch_frames=3 must divide chunk_frames=2"):
        VideoDiT(dataclasses.replace(CONFIG, patch_frames=3))
    with pytest.raises(ValueError, match="cannot be cut into tokens"):
        make_model(config=TUBELETS)(*clip(3, config=CONFIG))
