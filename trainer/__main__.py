"""`python -m trainer --spec URI`: run one attempt of a training job (see trainer/run.py)."""

from __future__ import annotations

import sys

from trainer.run import main

if __name__ == "__main__":
    sys.exit(main())
