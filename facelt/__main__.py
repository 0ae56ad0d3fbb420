import sys

from facelt.cli import main

sys.exit(main())
