import os
import sys

# The tests import their helpers (fake.py) by name; the SDK itself comes from
# the installed package (setup.sh installs it), not from src/.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
