# The learner's run: a recognisable teacher on a laptop CPU in under 20 minutes (see README for the
# measured time and figures). Against the default (config/ship.py) it uses 8x8 patches: 16 tokens a
# frame instead of 64, about 8x cheaper per step, so many more steps fit in the budget.
patch_size = 8
steps = 4000
batch_size = 16
lr = 1e-3
warmup = 200
eval_interval = 1000
out_dir = "out/cpu"
