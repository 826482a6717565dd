# Asks the interpreter to exit.
import sys

sys.exit(0)
