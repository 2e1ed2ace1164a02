# A high-noise expert for config/ship.py's teacher: its weights trained on at noise levels 0.5 to 1
# only, where a clip's objects are placed and their tracks decided (README, "A second teacher for the
# high noise levels"; read there, and not shipped: its student fades on long streams). Stack it on
# config/ship.py, which must have finished first:
#   nohup python train.py config/ship.py config/ship_expert.py > ship_expert.log 2>&1 &
#   python model.py out/ship/ckpt.pt out/teacher_experts.pt out/ship_expert/ckpt.pt
# The second command writes both weight sets in one file; loaded, they route every clip by its level.
init_from = "out/ship/ckpt.pt"
min_level = 0.5
seed = 1
steps = 1200
lr = 5e-4
warmup = 100
out_dir = "out/ship_expert"
