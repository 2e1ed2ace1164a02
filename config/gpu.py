# A consumer GPU (not measured here: this project's machines have no GPU). bf16 autocast is on by
# default; compile=True adds torch.compile. Twice the width and depth of the default, 4x the batch.
width = 256
depth = 8
heads = 8
steps = 20000
batch_size = 64
lr = 5e-4
warmup = 500
eval_interval = 2000
out_dir = "out/gpu"
