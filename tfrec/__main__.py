"""``python -m tfrec`` runs the command line."""
import sys

from tfrec.cli.main import main

sys.exit(main())
