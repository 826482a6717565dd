# Ends the kernel's process outright.
import os

os._exit(0)
