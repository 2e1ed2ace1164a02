# The run that makes the shipped student, assets/student.pt: the learner's preset with stage 2 run
# three times as long (README, "The shipped student"; up to commit cdbe632 it ran to 320 DMD steps,
# which read labels 0.922 against 0.906 but a Frechet distance of 3.7 against 2.3). Stack it on that preset:
#   nohup python distill.py config/distill_cpu.py config/distill_ship.py > ship_student.log 2>&1 &
#   python model.py out/student_ship/ckpt.pt assets/student.pt
# The learning rates are constant, so a finished learner's run can be carried on instead of redone:
# copy out/student/ckpt.pt to out/student_ship/ckpt.pt and add --resume=1.
dmd_steps = 240
out_dir = "out/student_ship"
