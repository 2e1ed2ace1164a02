"""The quality table end to end on a tiny teacher: it runs, counts forward passes as it samples, and ends
with a JSON line."""
import json
import os

import pytest
import torch

import evaluate
import train
from data import FEATURE_GROUPS, centroid_steps, frame_objects, frechet_distance, make_clips, video_features
from schedule import PLANS, forward_passes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train.main([os.path.join(ROOT, "config", "tiny.py"), f"--out_dir={out}"])
    return str(out / "ckpt.pt")


@pytest.mark.parametrize("cutoff, guidance, nfe", [(1.0, 3.0, 8), (0.5, 3.0, 6), (0.5, 1.0, 4)])
def test_teacher_row_counts_guided_steps_twice(teacher, tmp_path, capsys, cutoff, guidance, nfe):
    # 4 Euler steps from levels 1, 0.75, 0.5, 0.25: with the cutoff at 0.5 two of them are guided
    evaluate.main(["--ckpt", teacher, "--num", "3", "--steps", "4", f"--guidance={guidance}",
                   f"--guidance_cutoff={cutoff}", "--plot_dir", str(tmp_path)])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rows[teacher]["nfe"] == nfe
    assert 0 <= rows[teacher]["cleanliness"] <= 1 and "real data" in rows
    assert (tmp_path / "nfe_quality.png").exists() and (tmp_path / "chunk_rhythm.png").exists()
    assert len(rows["real data"]["step_profile"]) == 3  # one mean step per pair of consecutive frames (tiny: 4 frames)


def test_frames_option_sets_the_clip_length_of_the_main_table(teacher, tmp_path, capsys):
    evaluate.main(["--ckpt", teacher, "--num", "2", "--steps", "2", "--frames", "6", "--plot_dir", str(tmp_path)])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(rows["real data"]["step_profile"]) == len(rows[teacher]["step_profile"]) == 5  # tiny trains on 4
    with pytest.raises(SystemExit, match="at least 3"):
        evaluate.main(["--ckpt", teacher, "--frames", "2"])


def test_a_chunk_causal_net_from_train_py_streams_as_the_shipped_student_does(tmp_path, capsys):
    # train.py --causal=1 leaves no distillation recipe in its checkpoint: the diagonal plan on `last`
    train.main([os.path.join(ROOT, "config", "tiny.py"), "--causal=1", f"--out_dir={tmp_path}"])
    ckpt = str(tmp_path / "ckpt.pt")
    evaluate.main(["--ckpt", ckpt, "--num", "2", "--long_num", "2", "--long_factor", "2", "--plot_dir", str(tmp_path)])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rows[ckpt]["nfe"] == forward_passes(PLANS["diagonal"](2), "last")  # tiny: 4 frames, 2 chunks
    with pytest.raises(SystemExit, match="at least 2"):
        evaluate.main(["--ckpt", ckpt, "--num", "1"])


def test_stream_smoothness_reads_the_first_frames_and_tells_gliding_from_shuffled():
    clips = make_clips(8, frames=32, seed=3)
    video, labels = clips["video"], clips["labels"]
    gliding = evaluate.stream_smoothness(video, labels, 32)
    shuffled = evaluate.stream_smoothness(video[:, torch.randperm(32, generator=torch.Generator().manual_seed(0))], labels, 32)
    assert gliding["stream_jitter"] < 1.0 < shuffled["stream_jitter"]
    assert gliding["stream_area_change"] < 0.2
    longer = torch.cat([video, torch.rand_like(video)], 1)  # frames past the first 32 are not read
    assert evaluate.stream_smoothness(longer, labels, 32) == gliding


def test_chunk_rhythm_reads_one_for_the_world_and_flags_a_chunk_stutter():
    clips = make_clips(16, frames=24, seed=5)
    world = evaluate.chunk_rhythm([centroid_steps(clip) for clip in frame_objects(clips["video"])], chunk_frames=2)
    assert 0.9 < world["chunk_stutter"] < 1.1
    # keep frames 0, 1, 3, 4, 6, 7, ...: one step of the world inside each 2-frame chunk, two across
    stutter_frames = [frame for start in range(0, 24, 3) for frame in (start, start + 1)]
    stuttering = evaluate.chunk_rhythm([centroid_steps(clip) for clip in frame_objects(clips["video"][:, stutter_frames])],
                                       chunk_frames=2)
    assert abs(stuttering["step_within"] - world["step_within"]) < 0.2
    assert stuttering["chunk_stutter"] > 1.6


def test_frechet_groups_cover_the_features_and_single_out_what_changed():
    video = make_clips(32, seed=6)["video"]
    reference = video_features(make_clips(32, seed=7)["video"])
    columns = torch.arange(reference.shape[1])
    assert sorted(torch.cat([columns[group] for group in FEATURE_GROUPS.values()]).tolist()) == columns.tolist()
    shuffled = video[:, torch.randperm(video.shape[1], generator=torch.Generator().manual_seed(0))]
    features = [video_features(v) for v in (video, shuffled)]
    by_group = {name: [frechet_distance(f[:, group], reference[:, group]) for f in features]
                for name, group in FEATURE_GROUPS.items()}
    assert by_group["colour"][0] == pytest.approx(by_group["colour"][1])  # the same frames, in another order
    assert by_group["motion"][1] > 5 * by_group["motion"][0]
