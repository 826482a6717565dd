# Leaves files everywhere it can: /tmp, the home folder, the autograded/ folder, the course root.
import os

for path in ("/tmp/attack_file", os.path.expanduser("~/attack_file"), "../attack_file", "../../attack_file",
             "../../../attack_file", "attack_file_in_own_folder"):
    try:
        with open(path, "w") as handle:
            handle.write("was here")
    except OSError:
        pass
