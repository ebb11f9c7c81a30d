"""`python -m eval.eval_sync_conf` (the reference's command) runs `python -m scripts.eval_sync_conf`."""

import sys

from scripts.eval_sync_conf import main

if __name__ == "__main__":
    sys.exit(main())
