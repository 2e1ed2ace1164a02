# The run that makes the shipped teacher, assets/teacher.pt: 68.7 minutes on 2 cores of an AMD EPYC
# with AVX512-BF16 (bf16 autocast); an earlier version without the motion term and the weight floor
# took 96.5 minutes on 2 cores of an Intel Xeon with AMX; on 2 AVX2 cores in float32, with --compile=1,
# its first 1000 steps took 34.6 minutes, so about 2.1 hours in all (README, Quick start). Default
# model size: 32x32 frames in 4x4 patches (64 tokens a frame, 1024 a clip), width 128, depth 4. The
# learning rate is twice the default: the learner's preset showed that on a short schedule a higher
# rate pays (the first version, 5000 steps at 1e-3, read label agreement 0.86 at guidance 2). The
# motion term charges the error's frame-to-frame changes: steadier, sharper objects (README, "Charging
# the error's motion"). The weight floor stops the nearly clean levels from dominating the loss:
# smoother tracks and a lower Frechet distance at full length, and a smoother student (README, "Where
# the loss weight stops growing").
# Run it in the background and resume it if it stops:
#   nohup python train.py config/ship.py > ship.log 2>&1 &
#   python train.py config/ship.py --resume=1
steps = 3600
batch_size = 16
lr = 2e-3
warmup = 200
motion_weight = 4.0
weight_floor = 0.5
eval_interval = 500
threads = 2
out_dir = "out/ship"
