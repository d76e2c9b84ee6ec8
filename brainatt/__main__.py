import sys

from brainatt.cli import main

sys.exit(main())
