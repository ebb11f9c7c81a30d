"""`python -m eval.eval_syncnet_acc` (the reference's command) runs `python -m scripts.eval_syncnet_acc`."""

import sys

from scripts.eval_syncnet_acc import main

if __name__ == "__main__":
    sys.exit(main())
