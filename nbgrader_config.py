"""nbgrader configuration for the course; nbgrader reads it when run from the repository root.

solutions/NN_slug/NN_slug.ipynb is nbgrader's *source*, notebooks/NN_slug/ its *release*.
"""

import os
import sys

c = get_config()  # noqa: F821 - provided by traitlets when nbgrader loads this file

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "attention-course"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"

# Per-cell limit while autograding: a cell past it is interrupted and scores 0; grading goes on.
c.Execute.timeout = 120

# `nbgrader zip_collect` (submissions downloaded from an LMS): a file named
# <student>_<anything>_<NN_slug>[-N].ipynb, as Canvas names them, is NN_slug.ipynb from <student>;
# so is <student>_<anything>_Copy of <NN_slug>.ipynb, a Colab download uploaded to the LMS.
c.FileNameCollectorPlugin.named_regexp = (
    r".*/(?P<student_id>[^/_]+)_(?:[^/]*[_ ])?(?P<file_id>\d\d_[a-z0-9_]*[a-z0-9])(?:-\d+)?\.ipynb$"
)

# nbgrader runs its tools (alembic, jupyter) by name: the environment's bin/ must be on PATH.
_env_bin = os.path.dirname(sys.executable)
if _env_bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _env_bin + os.pathsep + os.environ.get("PATH", "")

# Before autograde starts: stop with a clear error where this machine lacks what the assignment's
# exercises need (never silent full or zero points) or cannot make a sandbox; run Triton kernels in
# Triton's CPU interpreter where there is no GPU, so a kernel gets the same grade on CPU and GPU.
# Then grade hardened (course_lib/grading/autograde.py): each notebook runs in a sandboxed kernel
# (no network, read-only file system but its own folder, no view of solutions/, the gradebook or
# other submissions, memory/process/CPU limits), and each graded function is called again outside
# the student's kernel on secret inputs; a grade cell scores the lower of the two verdicts.
# A failure here must stop autograde: nbgrader would log an error in its config file and grade on
# without the sandbox.
if sys.argv[1:2] == ["autograde"]:
    try:
        from nbgrader.converters import Autograde

        from course_lib.grading.autograde import hardened_preprocessors, require_sandbox
        from course_lib.grading.machine import exercises_of, prepare_grading_machine

        require_sandbox()
        prepare_grading_machine(exercises_of(a for a in sys.argv[2:] if not a.startswith("-")))
        c.Autograde.autograde_preprocessors = hardened_preprocessors(Autograde.class_traits()["autograde_preprocessors"].default())
    except BaseException as error:  # noqa: BLE001 - said in words, then nothing is graded
        print(f"nbgrader autograde stopped before grading: {type(error).__name__}: {error}", file=sys.stderr)
        os._exit(2)

# Feedback names every test, public and hidden, with its verdict and message, and shows no hidden
# test code, seed or traceback (course_lib/grading/feedback.py).
if sys.argv[1:2] == ["generate_feedback"]:
    try:
        from nbgrader.converters import GenerateFeedback

        from course_lib.grading.feedback import HiddenTestsRemoved, MathAsMathML

        c.GenerateFeedback.preprocessors = [
            HiddenTestsRemoved, MathAsMathML, *GenerateFeedback.class_traits()["preprocessors"].default()
        ]
    except BaseException as error:  # noqa: BLE001 - never hand out feedback that shows the hidden tests
        print(f"nbgrader generate_feedback stopped: {type(error).__name__}: {error}", file=sys.stderr)
        os._exit(2)
