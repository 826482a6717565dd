"""nbgrader settings for students, read by the JupyterLab that `make lab` starts (it puts lab_config/
on JUPYTER_CONFIG_PATH): the course id and the exchange through which the Assignments tab, and
`nbgrader fetch_assignment` / `nbgrader submit` run from that environment, reach the instructor.
Set COURSE_EXCHANGE where your instructor's exchange is not the usual /srv/nbgrader/exchange.
"""

import os

c = get_config()  # noqa: F821 - provided by traitlets when nbgrader loads this file

c.CourseDirectory.course_id = "attention-course"
c.Exchange.root = os.environ.get("COURSE_EXCHANGE", "/srv/nbgrader/exchange")
