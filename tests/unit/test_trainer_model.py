"""trainer/model.py: the one model-building module of training, inference and the GPU check."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from trainer import inference, model


def test_the_trainer_entry_point_imports_without_torch() -> None:
    # `python -m trainer` must reach its failure marker before anything needs the train extra.
    code = "import sys, trainer.main, trainer.run, trainer.model; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ)
    )
    assert out.stdout.strip() == "False"


def test_inference_loads_with_the_trainers_own_builders() -> None:
    assert inference.load_base is model.load_base
    assert inference.load_tokenizer is model.load_tokenizer
    assert inference.BaseModelSpec is model.BaseModelSpec


def test_cpu_attention_respects_packed_boundaries_with_sdpa() -> None:
    assert model.attention_implementation(torch.device("cpu")) == "sdpa"
