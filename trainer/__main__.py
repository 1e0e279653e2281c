"""`python -m trainer --spec URI`: run one attempt of a training job (see trainer/main.py)."""

from __future__ import annotations

import sys

from trainer.main import main

if __name__ == "__main__":
    sys.exit(main())
