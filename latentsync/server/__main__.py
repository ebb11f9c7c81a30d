import sys

from latentsync.server.cli import main

sys.exit(main())
