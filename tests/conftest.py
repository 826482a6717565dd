"""Without a CUDA GPU, Triton kernels run in Triton's CPU interpreter, as on a grading machine
(course_lib.grading.machine): TRITON_INTERPRET=1 must be set before Triton is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
