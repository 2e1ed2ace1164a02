# The learner's distillation, and the run that makes the shipped student assets/student.pt: both
# stages from the shipped teacher in under 40 minutes on 2 CPU cores (measured figures in README).
#   nohup python distill.py config/distill_cpu.py > distill.log 2>&1 &
#   python model.py out/student/ckpt.pt assets/student.pt
ode_pairs = 160       # teacher trajectories (about 7 minutes to make, then cached)
ode_steps = 500       # stage 1, about 0.85 s a step
dmd_steps = 180       # stage 2, about 7 s a step (5 critic updates each)
batch_size = 8
eval_interval = 100
threads = 2
out_dir = "out/student"
