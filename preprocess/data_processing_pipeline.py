"""`python -m preprocess.data_processing_pipeline` (the reference's command) runs
`python -m scripts.data_processing_pipeline`."""

import sys

from scripts.data_processing_pipeline import main

if __name__ == "__main__":
    sys.exit(main())
