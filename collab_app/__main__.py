import sys

from collab_app.cli import main

sys.exit(main())
