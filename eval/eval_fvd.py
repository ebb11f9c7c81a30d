"""`python -m eval.eval_fvd` (the reference's command) runs `python -m scripts.eval_fvd`."""

import sys

from scripts.eval_fvd import main

if __name__ == "__main__":
    sys.exit(main())
