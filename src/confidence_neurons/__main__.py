"""``python -m confidence_neurons``: the command line."""

import sys

from confidence_neurons.cli import main

sys.exit(main())
