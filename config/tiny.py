# Seconds-long runs for the tests: a few steps of a very small teacher on 16x16 clips.
image_size = 16
patch_size = 4
frames = 4
width = 32
depth = 1
heads = 2
steps = 4
batch_size = 2
warmup = 2
eval_interval = 2
sample_steps = 2
threads = 1
out_dir = "out/tiny"
bf16 = False
