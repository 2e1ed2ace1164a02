"""The quality table end to end on a tiny teacher: it runs, counts forward passes as it samples, and ends
with a JSON line."""
import json
import os

import pytest

import evaluate
import train

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
    assert (tmp_path / "nfe_quality.png").exists()
